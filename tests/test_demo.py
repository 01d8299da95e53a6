"""`vlm-lens demo`: the organism by default (a real answer), a tiny random model only on request."""

from __future__ import annotations

import re

import pytest

from vlm_lens.cli import main

ANSWER = re.compile(r"greedy answer: '(.*)' \(count in the image: (\d+)\)")


def test_demo_defaults_to_the_organism_and_answers_the_count(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "the shipped counting organism" in out
    assert "qwen3_vl: 4 layers x 4 heads" in out
    (answer, count) = ANSWER.search(out).groups()
    # The organism counts this image (seed 0, 15 dots) right; a random-weight model prints noise.
    assert answer == count


def test_demo_tiny_says_its_answer_is_noise(capsys):
    assert main(["demo", "--tiny", "llava"]) == 0
    out = capsys.readouterr().out
    assert "tiny random-weight llava checkpoint" in out and "noise" in out
    assert out.startswith("a tiny") and "llava:" in out and ANSWER.search(out)


def test_demo_model_and_tiny_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--tiny", "llava", "--model", "some/dir"])
    assert "not allowed with argument" in capsys.readouterr().err
