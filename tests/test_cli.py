"""The console script's top level: cheap help, and one help line per sub-command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vlm_lens.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parent.parent


def _subcommand_helps(parser) -> dict[str, str]:
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return {a.dest: a.help for a in sub._choices_actions}


def _heavy_modules_after(argv: list[str]) -> str:
    """Stdout of `main(argv)` in a fresh interpreter, then the heavy modules it imported."""
    code = (
        "import sys\n"
        "from vlm_lens.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'vlm_lens.studies.counting',\n"
        "                     'vlm_lens.studies.yesbias') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def test_help_lists_every_subcommand_without_importing_torch():
    out = _heavy_modules_after(["--help"])
    assert "HEAVY []" in out
    for name, help_text in COMMANDS.items():
        assert name in out and help_text.split(":")[0] in out


def test_the_top_level_help_is_what_each_subcommand_says_of_itself():
    assert _subcommand_helps(build_parser([])) == COMMANDS
    assert _subcommand_helps(build_parser()) == COMMANDS


def test_no_subcommand_prints_help_and_fails(capsys):
    from vlm_lens.cli import main

    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["nonsense"])


@pytest.mark.parametrize("command", ["count", "yesbias"])
def test_a_study_commands_help_imports_no_study(command):
    out = _heavy_modules_after([command, "--help"])
    assert "HEAVY []" in out
    assert "--out" in out
