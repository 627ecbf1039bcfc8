"""R4 narrative rules (txt-1, txt-2) on `text.div`, checked by the validator in linear time."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from headless_ehr.fhir.definitions import definitions
from headless_ehr.fhir.json import loads
from headless_ehr.fhir.outcome import Issue
from headless_ehr.fhir.validation import validator
from headless_ehr.fhir.validation.narrative import narrative_rules

XHTML = "http://www.w3.org/1999/xhtml"


def div(inner: str, attributes: str = "") -> str:
    return f'<div xmlns="{XHTML}"{attributes}>{inner}</div>'


def patient(narrative: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "text": {"status": "generated", "div": narrative}}


def check(resource: dict[str, Any], **kwargs: Any) -> list[Issue]:
    return validator().validate(loads(json.dumps(resource)), **kwargs)


def problems(narrative: str, **kwargs: Any) -> list[tuple[str, str | None]]:
    return [(i.code, i.expression) for i in check(patient(narrative), **kwargs)]


def message(narrative: str) -> str:
    issues = check(patient(narrative))
    assert len(issues) == 1, issues
    return issues[0].diagnostics


def test_plain_narrative_is_valid() -> None:
    assert check(patient(div("<p>John <b>Smith</b></p>"))) == []


def test_every_element_txt1_lists_is_allowed() -> None:
    rules = narrative_rules(definitions())
    inner = "".join(f"<{name}>x</{name}>" for name in sorted(rules.elements))
    assert check(patient(div(inner))) == []


def test_the_allowed_names_are_read_from_the_r4_definition() -> None:
    rules = narrative_rules(definitions())
    assert {"p", "table", "img", "a", "span"} <= rules.elements
    assert "script" not in rules.elements
    assert {"href", "src", "style", "class"} <= rules.attributes
    assert "onclick" not in rules.attributes


@pytest.mark.parametrize("element", ["script", "object", "iframe", "form", "base", "link", "style", "body", "input"])
def test_element_outside_txt1_is_refused(element: str) -> None:
    assert problems(div(f"text<{element}>x</{element}>")) == [("invariant", "Patient.text.div")]
    assert f"<{element}>" in message(div(f"text<{element}>x</{element}>"))


def test_script_in_a_contained_resource_narrative_is_refused() -> None:
    contained = {"resourceType": "Organization", "id": "o", "text": {"status": "generated", "div": div("<script/>x")}}
    resource = {**patient(div("ok")), "contained": [contained], "managingOrganization": {"reference": "#o"}}
    assert [(i.code, i.expression) for i in check(resource)] == [("invariant", "Patient.contained[0].text.div")]


def test_event_handler_attribute_is_refused() -> None:
    text = message(div('<p onclick="alert(1)">x</p>'))
    assert "event handler" in text and "onclick" in text


def test_attribute_outside_txt1_is_refused() -> None:
    assert problems(div('<p contenteditable="true">x</p>')) == [("invariant", "Patient.text.div")]


def test_namespaced_attribute_is_refused() -> None:
    narrative = f'<div xmlns="{XHTML}" xmlns:xlink="http://www.w3.org/1999/xlink"><a xlink:href="x">y</a></div>'
    assert problems(narrative) == [("invariant", "Patient.text.div")]


def test_xml_lang_is_allowed() -> None:
    assert check(patient(div("<p>Bonjour</p>", ' xml:lang="fr" lang="fr"'))) == []


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        " java\tscript:alert(1)",
        " " * 100 + "javascript:alert(1)",
        "java" + "\n" * 100 + "script:alert(1)",
        "vbscript:msgbox(1)",
        "data:text/html;base64,PHNjcmlwdD4=",
    ],
)
def test_script_or_data_url_in_a_link_is_refused(url: str) -> None:
    escaped = url.replace("\t", "&#9;").replace("\n", "&#10;")
    assert problems(div(f'<a href="{escaped}">x</a>')) == [("invariant", "Patient.text.div")]


def test_script_url_in_an_image_is_refused() -> None:
    assert problems(div('x<img src="javascript:alert(1)"/>')) == [("invariant", "Patient.text.div")]


def test_data_url_in_an_image_is_allowed() -> None:
    assert check(patient(div('<img src="data:image/png;base64,iVBORw0KGgo=" alt="x"/>'))) == []


def test_ordinary_links_are_allowed() -> None:
    inner = '<a href="http://example.org/a?b=c">x</a><a href="#section">y</a><a name="section">z</a>'
    assert check(patient(div(inner))) == []


def test_script_in_a_style_attribute_is_refused() -> None:
    assert problems(div('<p style="background: url(javascript:alert(1))">x</p>')) == [("invariant", "Patient.text.div")]


def test_plain_style_attribute_is_allowed() -> None:
    assert check(patient(div('<p style="color: red; margin: 4px">x</p>'))) == []


def test_div_without_the_xhtml_namespace_is_refused() -> None:
    assert problems("<div>x</div>") == [("invariant", "Patient.text.div")]


def test_element_in_another_namespace_is_refused() -> None:
    assert problems(div('<svg xmlns="http://www.w3.org/2000/svg">x</svg>')) == [("invariant", "Patient.text.div")]


def test_root_other_than_div_is_refused() -> None:
    assert problems(f'<p xmlns="{XHTML}">x</p>') == [("value", "Patient.text.div")]


def test_divx_root_is_refused() -> None:
    assert problems(f'<divx xmlns="{XHTML}">x</divx>') == [("invariant", "Patient.text.div")]


@pytest.mark.parametrize(
    "narrative",
    [
        div("<p>unclosed"),
        div("<b><i>x</b></i>"),
        div("a & b"),
        div("x") + "<div>second root</div>",
        div("x") + "trailing",
        div("<p a='1' a='2'>x</p>"),
    ],
)
def test_narrative_that_is_not_well_formed_is_refused(narrative: str) -> None:
    assert problems(narrative) == [("value", "Patient.text.div")]


def test_html_named_entity_is_refused() -> None:
    """XHTML without a DTD knows only XML's five entities; the reference validator agrees."""
    assert "undefined entity" in message(div("a&nbsp;b"))


def test_xml_and_numeric_entities_are_allowed() -> None:
    assert check(patient(div("&lt;a&gt; &amp; &quot;b&quot; &#160; &#xA0;"))) == []


def test_doctype_and_entity_declarations_are_refused_at_once() -> None:
    laughs = (
        '<!DOCTYPE div [<!ENTITY a "aaaaaaaaaa">'
        + "".join(f'<!ENTITY a{i} "{"&a" + str(i - 1) + ";" if i else "&a;"}' * 10 + '">' for i in range(10))
        + "]>"
    )
    started = time.perf_counter()
    assert problems(laughs + div("&a9;")) == [("value", "Patient.text.div")]
    assert problems(div("x").replace("<div ", "<div " + laughs, 1)) == [("value", "Patient.text.div")]
    assert time.perf_counter() - started < 0.5


def test_processing_instruction_is_refused() -> None:
    assert problems(div('x<?php echo "hi"; ?>')) == [("invariant", "Patient.text.div")]


def test_comments_are_allowed() -> None:
    assert check(patient(div("x<!-- a comment -->"))) == []


@pytest.mark.parametrize("inner", ["", "   \n\t ", "<p> </p><br/>", "<!-- only a comment -->"])
def test_narrative_without_content_is_refused_by_txt2(inner: str) -> None:
    assert problems(div(inner)) == [("invariant", "Patient.text.div")]
    assert message(div(inner)).startswith("txt-2")


def test_image_alone_is_content() -> None:
    assert check(patient(div('<img src="#photo" alt=""/>'))) == []


def test_narrative_over_the_size_limit_is_refused() -> None:
    narrative = div("x" * 200)
    assert problems(narrative, max_narrative_bytes=100) == [("too-long", "Patient.text.div")]
    assert check(patient(narrative), max_narrative_bytes=len(narrative)) == []


def test_size_limit_counts_utf8_bytes() -> None:
    narrative = div("é" * 60)  # 60 characters, 120 bytes
    assert problems(narrative, max_narrative_bytes=len(narrative) + 30) == [("too-long", "Patient.text.div")]


def test_default_size_limit_is_one_mebibyte() -> None:
    assert problems(div("x" * (1024 * 1024))) == [("too-long", "Patient.text.div")]
    assert check(patient(div("x" * (1024 * 1024 - 100)))) == []


def test_checking_stays_linear_on_hostile_markup() -> None:
    """A near-limit div of deep nesting, many attributes or unclosed tags is answered at once."""
    nested = 100_000
    shapes = [
        div("<span>" * nested + "x" + "</span>" * nested),
        div('<p class="a" title="b">x</p>' * 30_000),
        div("<a" * 200_000),
        div("<" * 500_000),
    ]
    for narrative in shapes:
        started = time.perf_counter()
        check(patient(narrative))
        assert time.perf_counter() - started < 2.0
