"""The installed dependencies lie in the ranges pyproject.toml declares.

CI (`.ci/run`) runs the suite on the oldest transformers of the declared range and on the
newest one the registry serves; a venv outside the range must fail here, loudly, instead of
passing tests that say nothing about the versions the project claims.

Not for: checking behaviour on a version (every other test does that).
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def declared() -> dict[str, Requirement]:
    """The project's runtime requirements by name, as pyproject.toml states them."""
    with PYPROJECT.open("rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    return {r.name: r for r in map(Requirement, deps)}


def outside(requirements: list[Requirement]) -> list[str]:
    """One line per requirement the running environment does not meet (markers respected)."""
    problems = []
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            problems.append(f"{req.name} is not installed (declared {req})")
            continue
        if not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req.name} {installed} is outside the declared range {req}")
    return problems


def test_transformers_is_in_the_declared_range(record_property):
    req = declared()["transformers"]
    running = version("transformers")
    record_property("transformers", running)  # in --junitxml; .ci/run prints it as well
    assert outside([req]) == [], f"transformers {running}; declared {req.specifier}"


def test_every_declared_dependency_is_installed_in_range():
    assert outside(list(declared().values())) == []


@pytest.mark.parametrize("spec", ["transformers!={v}", "transformers<{v}", "transformers>{v}"])
def test_a_version_outside_the_range_is_reported(spec):
    running = version("transformers")
    req = Requirement(spec.format(v=running))
    assert outside([req]) == [f"transformers {running} is outside the declared range {req}"]


def test_a_missing_dependency_is_reported_and_a_foreign_marker_is_not():
    missing = Requirement("vlm-lens-no-such-package>=1")
    assert outside([missing]) == [f"vlm-lens-no-such-package is not installed (declared {missing})"]
    assert outside([Requirement("vlm-lens-no-such-package>=1; sys_platform == 'no-such-os'")]) == []
