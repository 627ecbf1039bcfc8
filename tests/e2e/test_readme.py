"""The README's "Try it" block, run as written against a fresh `ehr serve`.

Each comment in the block says what the commands under it answer: the HTTP statuses
in order, an ETag, and how many matches (or versions) a Bundle holds. This test runs
the block with bash and real curl, step by step in one shell, and checks every claim,
so the README cannot drift from the server.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .test_serve import Server

README = Path(__file__).resolve().parents[2] / "README.md"
STATUS = re.compile(r"\b([1-5]\d\d)\b")
ETAG = re.compile(r'ETag (W/"\d+")')
COUNT = re.compile(r"\((\d+) (match|matches|versions?)\)")


@dataclass
class Step:
    comment: str
    commands: list[str] = field(default_factory=list)


def try_it_block() -> str:
    text = README.read_text()
    section = text[text.index("## Try it") :]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def steps(block: str) -> list[Step]:
    """Comment-led groups of commands; a command runs on while its lines end in a backslash
    or leave a quote open."""
    out: list[Step] = []
    command: list[str] = []
    for line in block.splitlines():
        if command:
            command.append(line)
        elif line.startswith("#"):
            out.append(Step(line[1:].strip()))
            continue
        elif line.strip():
            command = [line]
        else:
            continue
        text = "\n".join(command)
        if not text.endswith("\\") and text.count("'") % 2 == 0:
            if not out:  # set-up before the first comment (BASE=…)
                out.append(Step(""))
            out[-1].commands.append(text)
            command = []
    return out


def _split(raw: str) -> tuple[int, str, Any]:
    """(status, headers, parsed JSON body) of one `curl [-i] … -w '\\n%{http_code}'` output."""
    text, _, status = raw.rpartition("\n")
    headers, body = "", text
    if text.startswith("HTTP/"):
        headers, _, body = text.replace("\r\n", "\n").partition("\n\n")
    return int(status), headers, json.loads(body) if body.strip() else None


def _count(body: Any, what: str) -> int:
    entries = body.get("entry") or []
    if what.startswith("version"):
        return len(entries)
    return sum(1 for e in entries if (e.get("search") or {}).get("mode", "match") == "match")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_try_it_runs_top_to_bottom_as_documented(fresh_database: str, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
    # a newcomer's server: `ehr token` in the block reads the admin client from its data dir
    server = Server({**env, "EHR_DATABASE_URL": fresh_database}, admin_from_env=False)
    try:
        server.wait_ready()
        plan = steps(try_it_block())
        assert len(plan) >= 15, "the Try it block lost its steps"
        outputs = tmp_path / "out"
        outputs.mkdir()
        # One shell runs the block as written; each curl call's output (with its status
        # appended) goes to a numbered file.
        script = [
            "set -eu",
            f"N=0; OUT={outputs}",
            'curl() { N=$((N+1)); command curl "$@" -w \'\\n%{http_code}\' > "$OUT/$N"; }',
            f'ehr() {{ {shlex.quote(sys.executable)} -m headless_ehr.cli "$@"; }}',  # this checkout's `ehr`
            f"export EHR_DATA_DIR={shlex.quote(str(server.data_dir))}",
        ]
        for step in plan:
            script.extend(step.commands)
        text = "\n".join(script).replace("127.0.0.1:8080", f"127.0.0.1:{server.port}")
        run = subprocess.run(["bash", "-c", text], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr

        n = 0
        for step in plan:
            calls = [c for c in step.commands if c.lstrip().startswith("curl")]
            expected = [int(s) for s in STATUS.findall(step.comment)]
            if not calls:
                continue
            assert len(expected) == len(calls), f"'{step.comment}' must give a status per command"
            results = []
            for want in expected:
                n += 1
                status, headers, body = _split((outputs / str(n)).read_text())
                assert status == want, f"'{step.comment}': got {status}, body {body}"
                results.append((headers, body))
            if tag := ETAG.search(step.comment):
                assert f"etag: {tag.group(1)}".lower() in results[0][0].lower(), step.comment
            if found := COUNT.search(step.comment):
                body = results[-1][1]
                assert _count(body, found.group(2)) == int(found.group(1)), f"'{step.comment}': {body}"
            if "OperationOutcome" in step.comment:
                assert results[-1][1]["resourceType"] == "OperationOutcome"
                if "gender" in step.comment:
                    assert any("gender" in json.dumps(i) for i in results[-1][1]["issue"])
        assert n == len(list(outputs.iterdir())), "a curl call in the block has no documented answer"
    finally:
        assert server.stop() == 0


def test_quick_start_makes_the_first_request_with_a_token_from_ehr_token():
    text = README.read_text()
    quick_start = text[text.index("## Quick start") : text.index("## Try it")]
    assert 'curl -H "Authorization: Bearer $(ehr token)" http://127.0.0.1:8080/fhir/Patient' in quick_start
