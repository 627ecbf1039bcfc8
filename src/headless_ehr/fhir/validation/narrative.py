"""The R4 narrative rules for `xhtml` values (Narrative.div): txt-1 and txt-2.

txt-1: the div is well-formed XHTML whose root is a `<div>` in the XHTML namespace,
holding only the basic formatting elements and attributes of HTML 4.0. R4 gives its
FHIRPath as the opaque `htmlChecks()`, but the same constraint's XPath lists the
allowed element and attribute names, so both lists are read from the vendored
definitions and the spec stays the source of truth. Scripts come in by the URL too,
so `javascript:` and `vbscript:` URLs are refused everywhere and `data:` URLs
everywhere but an image's `src`.
txt-2: the narrative has some non-whitespace text, or an image with a `src`.

The div is parsed by expat, a streaming parser: linear in the size of the div, no
tree is built, and parsing stops at the first problem. A DOCTYPE is refused before
its internal subset is read, so no entity can be declared (no "billion laughs") and
none is ever loaded from outside.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from xml.parsers import expat

from ..definitions import Definitions

XHTML_NS = "http://www.w3.org/1999/xhtml"
XML_NS = "http://www.w3.org/XML/1998/namespace"
DEFAULT_MAX_BYTES = 1024 * 1024  # EHR_MAX_NARRATIVE_BYTES

# `xml:lang` and `xml:space` are XML's own attributes, not HTML ones: the XPath's
# name() test leaves them out, but the spec's examples (and the reference validator)
# use xml:lang on the div, so they are allowed.
_XML_ATTRIBUTES = frozenset({"xml:lang", "xml:space"})
# Attributes whose value is a URL the narrative's reader may follow or load.
_URL_ATTRIBUTES = frozenset({"href", "src", "longdesc", "cite"})
_BAD_SCHEMES = ("javascript:", "vbscript:", "data:")
# Browsers skip whitespace and control characters inside a scheme ("java\tscript:").
_IGNORED_IN_SCHEME = re.compile(r"[\x00-\x20]+")
_STYLE_SCRIPT = re.compile(r"javascript:|vbscript:|expression\s*\(", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class NarrativeRules:
    """The element and attribute names txt-1 allows."""

    elements: frozenset[str]
    attributes: frozenset[str]


def narrative_rules(defs: Definitions) -> NarrativeRules:
    """The allowed names from the XPath of Narrative.div's txt-1 constraint."""
    for element in defs.structure_definitions["Narrative"]["snapshot"]["element"]:
        for constraint in element.get("constraint", []):
            if constraint["key"] == "txt-1":
                xpath = constraint["xpath"]
                elements = re.search(r"local-name\(\.\)=\(([^)]*)\)", xpath)
                attributes = re.search(r"[^-]name\(\.\)=\(([^)]*)\)", xpath)
                if elements is None or attributes is None:
                    break
                return NarrativeRules(
                    frozenset(re.findall(r"'([^']+)'", elements.group(1))),
                    frozenset(re.findall(r"'([^']+)'", attributes.group(1))) | _XML_ATTRIBUTES,
                )
    raise ValueError("the definitions have no txt-1 XPath to read the narrative rules from")


@dataclass(frozen=True, slots=True)
class NarrativeProblem:
    """Why a div is refused: an OperationOutcome issue code and a message."""

    code: str
    message: str


class _Refused(Exception):
    def __init__(self, problem: NarrativeProblem) -> None:
        self.problem = problem


def check_narrative(div: str, rules: NarrativeRules, max_bytes: int = DEFAULT_MAX_BYTES) -> NarrativeProblem | None:
    """The first problem with `div` (a JSON xhtml value), or None when it is valid."""
    if len(div) > max_bytes or (len(div) * 4 > max_bytes and len(div.encode("utf-8", "surrogatepass")) > max_bytes):
        return NarrativeProblem("too-long", f"the narrative is larger than the {max_bytes} byte limit")
    if not div.lstrip().startswith("<div"):  # nothing before it: no XML declaration, DOCTYPE or comment
        return NarrativeProblem("value", "the narrative must be XHTML whose root element is a <div>")
    parser = expat.ParserCreate(namespace_separator=" ")
    scan = _Scan(rules)
    parser.buffer_text = True  # one call per run of text, not per line or entity
    parser.StartDoctypeDeclHandler = scan.doctype
    parser.EntityDeclHandler = scan.entity
    parser.ProcessingInstructionHandler = scan.instruction
    parser.StartElementHandler = scan.start
    parser.CharacterDataHandler = scan.text
    try:
        parser.Parse(div, True)
    except _Refused as refused:
        return refused.problem
    except expat.ExpatError as exc:
        message = expat.errors.messages.get(exc.code, "not well-formed") if exc.code else str(exc)
        return NarrativeProblem("value", f"the narrative is not well-formed XHTML ({message}, column {exc.offset + 1})")
    except UnicodeError:
        return NarrativeProblem("value", "the narrative is not valid Unicode")
    if not scan.content:
        return NarrativeProblem("invariant", "txt-2: the narrative must have some non-whitespace content")
    return None


class _Scan:
    """expat callbacks: each refuses what txt-1 does not allow, as soon as it is seen."""

    __slots__ = ("content", "root", "rules")

    def __init__(self, rules: NarrativeRules) -> None:
        self.rules = rules
        self.root = True  # the next element is the root (expat refuses a second one)
        self.content = False  # txt-2: non-whitespace text or an image with a src

    @staticmethod
    def refuse(message: str) -> None:
        raise _Refused(NarrativeProblem("invariant", f"txt-1: {message}"))

    def doctype(self, *_: object) -> None:
        self.refuse("the narrative may not have a DOCTYPE")

    def entity(self, *_: object) -> None:
        self.refuse("the narrative may not declare entities")

    def instruction(self, target: str, _data: str) -> None:
        self.refuse(f"the narrative may not have processing instructions (<?{target}?>)")

    def start(self, name: str, attributes: dict[str, str]) -> None:
        namespace, _, local = name.rpartition(" ")
        if self.root:
            if local != "div":
                self.refuse("the root element of the narrative must be a <div>")
            self.root = False
        if namespace != XHTML_NS:
            where = f"namespace '{namespace}'" if namespace else "no namespace"
            self.refuse(f"<{local}> is in {where}; the narrative must be in the XHTML namespace {XHTML_NS}")
        if local not in self.rules.elements:
            self.refuse(f"<{local}> is not allowed in a narrative")
        for key, value in attributes.items():
            attribute = _attribute_name(key)
            if attribute not in self.rules.attributes:
                if attribute.lower().startswith("on"):
                    self.refuse(f"event handler attribute '{attribute}' on <{local}> is not allowed in a narrative")
                self.refuse(f"attribute '{attribute}' on <{local}> is not allowed in a narrative")
            if attribute in _URL_ATTRIBUTES:
                scheme = _IGNORED_IN_SCHEME.sub("", value)[:16].lower()  # the whole value: no padding hides it
                if scheme.startswith(_BAD_SCHEMES) and not (
                    local == "img" and attribute == "src" and scheme.startswith("data:")
                ):
                    self.refuse(f"{attribute}='{value[:40]}' on <{local}>: script and data URLs are not allowed")
                if local == "img" and attribute == "src" and value.strip():
                    self.content = True
            elif attribute == "style" and _STYLE_SCRIPT.search(value):
                self.refuse(f"the style of <{local}> may not contain script")

    def text(self, data: str) -> None:
        if not self.content and not data.isspace():
            self.content = True


def _attribute_name(key: str) -> str:
    """expat gives namespaced attributes as 'namespace local'; xml:* keep their prefix."""
    if " " not in key:
        return key
    namespace, _, local = key.rpartition(" ")
    if namespace == XML_NS:
        return f"xml:{local}"
    return f"{{{namespace}}}{local}"  # xlink:href and the like: never allowed
