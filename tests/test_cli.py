"""The console script's top level: cheap help, and one help line per sub-command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scripts.bad_inputs import CLI_BAD_ARGUMENTS, TINY
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


# ----------------------------------------------------------------------------- bad arguments


def _exit_code(argv: list[str]) -> int:
    from vlm_lens.cli import main

    try:
        return main(argv)
    except SystemExit as done:  # argparse's own refusals
        return done.code


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("argv", "says"), CLI_BAD_ARGUMENTS, ids=lambda v: " ".join(v) if isinstance(v, list) else None
)
def test_a_bad_argument_is_one_line_and_exit_2_before_loading_or_writing(
    argv, says, tiny_ckpt, tmp_path, capsys, monkeypatch
):
    from vlm_lens import HookedVLM

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(HookedVLM, "from_pretrained", no_loading)
    argv = [str(tiny_ckpt("qwen3_vl")) if a == TINY else a for a in argv]
    capsys.readouterr()  # building the checkpoint (once a session) prints progress
    fresh, used = tmp_path / "fresh", tmp_path / "used"
    used.mkdir()
    (used / "run.json").write_text('{"kept": true}\n')
    for out in (fresh, used):
        before = _snapshot(used)
        assert _exit_code([*argv, "--out", str(out), "--no-progress"]) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"vlm-lens {argv[0]}: error: ") and says in lines[0], lines[0]
        assert not fresh.exists() and _snapshot(used) == before


def test_debug_shows_the_traceback_and_without_it_one_line(tmp_path):
    argv = [sys.executable, "-m", "vlm_lens.cli", "count", "--model", str(tmp_path / "nope")]
    argv += ["--out", str(tmp_path / "out")]
    plain = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    assert plain.returncode == 2
    assert plain.stderr.splitlines() == [
        f"vlm-lens count: error: --model: model '{tmp_path / 'nope'}': no such folder "
        "(a hub id looks like org/name)"
    ]
    debug = subprocess.run([*argv, "--debug"], cwd=ROOT, capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "UsageError: --model: model" in debug.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_count_processes_into_one_out_give_one_error_and_a_correct_run(
    tiny_ckpt, tmp_path, capsys, monkeypatch
):
    """A second `vlm-lens count` into the --out of a running one is refused at once with one
    line (exit 1); the first finishes with every sample once."""
    import json
    import os
    import time

    from vlm_lens import HookedVLM
    from vlm_lens.cli import main

    # The second command (in this process) gets its model at once, so it reaches the run's
    # lock while the first is still running.
    loaded = HookedVLM.from_pretrained(tiny_ckpt("qwen3_vl"))
    monkeypatch.setattr(HookedVLM, "from_pretrained", lambda *args, **kwargs: loaded)
    n = 16
    argv = ["count", "--model", str(tiny_ckpt("qwen3_vl")), "--n", str(n), "--size", "64"]
    argv += ["--radius", "2", "--digits-only", "--no-png", "--no-progress", "--out", str(tmp_path)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    first = subprocess.Popen(
        [sys.executable, "-m", "vlm_lens.cli", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list(tmp_path.rglob(".samples.jsonl.lock")):  # the first holds its log
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        capsys.readouterr()
        assert main(argv) == 1
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(errors) == 1 and errors[0].startswith("vlm-lens count: error: RunLockedError")
        assert "in use by another process" in errors[0]
        assert first.poll() is None, "the first run ended before the second was refused"
    finally:
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    (log,) = tmp_path.rglob("samples.jsonl")
    done = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted((r["condition"], r["index"]) for r in done) == [
        (c, i) for c in ("baseline", "shuffled") for i in range(n)
    ]  # the baseline and its content-free control, every sample once
    assert (tmp_path / "report.html").exists()
