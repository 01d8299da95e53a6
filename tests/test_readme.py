"""The README's Python blocks run as written, in order, in one namespace (as a reader pastes them).

Its two bash blocks are the set-up commands (a fresh venv and a multi-GB install): they are
counted, not run.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


def _blocks(lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(README.read_text()) if kind == lang]


def test_readme_has_exactly_the_two_setup_commands():
    bash = _blocks("bash")
    assert len(bash) == 2, bash
    assert all(b.startswith("python3 -m venv .venv") for b in bash)
    assert "vlm-lens count" in bash[0] and "pytest" in bash[1]


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = _blocks("python")
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md python block {i}", "exec"), namespace)
    # The tour's comment states the organism's answer; it must be what the model says.
    (claimed,) = re.findall(r"^out\.texts\[0\]  # '(.*)'$", blocks[0], re.M)
    assert namespace["out"].texts[0] == claimed
    assert not namespace["patched"].equal(namespace["logits"])  # the edits change the output
