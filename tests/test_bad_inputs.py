"""Every bad input of `scripts/bad_inputs.py` (API, images, loaders, metrics, CLI) is refused
with a message naming its cause: no silent acceptance, no error that hides the cause."""

from __future__ import annotations

import pytest

from scripts.bad_inputs import CASES, Env, markdown, run_case


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_ckpt) -> Env:
    return Env(tmp_path_factory.mktemp("bad_inputs"), tiny_ckpt("qwen3_vl"))


def test_there_are_at_least_40_across_every_area():
    areas = {case.area for case in CASES}
    assert len(CASES) >= 40 and areas == {"API", "images", "loaders", "metrics", "CLI"}


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_each_bad_input_is_refused_naming_its_cause(case, env):
    outcome, message = run_case(case, env)
    assert outcome in ("error", "warning", "exit 2"), f"{outcome}: {message}"
    assert markdown([(1, case, outcome, message)]).count("\n") == 2  # one table row


def test_a_silent_case_is_reported_as_silent(env):
    from scripts.bad_inputs import Case

    quiet = Case("API", "a valid call", lambda env: None, ("anything",))
    unclear = Case("API", "an error without the cause", lambda env: 1 / 0, ("image",))
    assert run_case(quiet, env) == ("SILENT", "")
    assert run_case(unclear, env)[0] == "UNCLEAR"
