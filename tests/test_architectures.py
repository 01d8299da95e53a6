"""Each architecture's knowledge lives in its one file of `vlm_lens.architectures`.

The registry is built from the files present (one `ARCHITECTURE` per public module), and no
other module of the library names an architecture: neither its key (`config.model_type`, e.g.
as a string literal) nor a transformers class of it (`<Prefix>Config`, `<Prefix>Processor`,
... where `<Prefix>ForConditionalGeneration` is its model class). Prose that names a family
("Gemma3's sandwich norms") is not a name in this sense: it explains shared code.

Not for: what the records say (the per-feature tests check that on the tiny models).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import transformers

from vlm_lens import architectures
from vlm_lens.architectures import ARCHITECTURES, REGISTRY, Architecture

PACKAGE = Path(architectures.__file__).resolve().parent.parent
ARCH_DIR = PACKAGE / "architectures"

# Modules outside `vlm_lens/architectures` that may name an architecture, with why.
ALLOWED: dict[tuple[str, str], str] = {
    # The studies' and CLI's fallback model is a tiny checkpoint of the organism's architecture
    # (the shipped organism is a Qwen3-VL), so that a run without the organism looks like one
    # with it. The CLI and study docstrings describe that fallback.
    ("studies/fallback.py", "qwen3_vl"): "fallback model = the organism's architecture",
    ("studies/counting/study.py", "qwen3_vl"): "docstring of the fallback model",
    ("studies/yesbias/study.py", "qwen3_vl"): "docstring of the fallback model",
    ("cli/count.py", "qwen3_vl"): "docstring of the fallback model",
    ("cli/yesbias.py", "qwen3_vl"): "docstring of the fallback model",
}


def _patterns(arch: Architecture) -> list[re.Pattern[str]]:
    prefix = arch.adapter.model_class.removesuffix("ForConditionalGeneration")
    return [
        # the key as a word; not inside a hub id or model name ("llava-hf/llava-1.5-7b-hf")
        re.compile(rf"(?<![\w/-]){re.escape(arch.key)}(?![\w/-])"),
        re.compile(rf"\b{re.escape(prefix)}(?=[A-Z])\w*"),  # Gemma3Config, not "Gemma3's"
    ]


def _names_in(text: str, arch: Architecture) -> set[str]:
    return {m.group(0) for pattern in _patterns(arch) for m in pattern.finditer(text)}


def _mentions() -> dict[tuple[str, str], set[str]]:
    """(module path under vlm_lens/, arch key) -> the names found, outside architectures/."""
    found: dict[tuple[str, str], set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if ARCH_DIR in path.parents:
            continue
        text = path.read_text()
        for arch in REGISTRY.values():
            names = _names_in(text, arch)
            if names:
                found[(path.relative_to(PACKAGE).as_posix(), arch.key)] = names
    return found


def test_the_registry_lists_exactly_the_files_present():
    files = sorted(p.stem for p in ARCH_DIR.glob("*.py") if not p.stem.startswith("_"))
    assert sorted(ARCHITECTURES) == files == architectures.module_names()
    for key, arch in REGISTRY.items():
        module = __import__(f"vlm_lens.architectures.{key}", fromlist=["ARCHITECTURE"])
        assert module.ARCHITECTURE is arch and arch.key == key
        assert hasattr(transformers, arch.adapter.model_class), arch.adapter.model_class


def test_the_library_reads_the_registry():
    from vlm_lens import adapters, zoo
    from vlm_lens.zoo import real_vocab

    assert adapters.SUPPORTED == zoo.ARCHITECTURES == ARCHITECTURES
    assert {k: a.adapter for k, a in REGISTRY.items()} == adapters.ADAPTERS
    assert set(real_vocab.REAL_SETTINGS) == set(ARCHITECTURES)
    packages = {a.real_vocab.package.key: a.real_vocab.package for a in REGISTRY.values()}
    assert packages == real_vocab.PACKAGES


def test_each_architecture_file_names_its_architecture():
    """The scan below can find names: every architecture's own file has them."""
    for key, arch in REGISTRY.items():
        names = _names_in((ARCH_DIR / f"{key}.py").read_text(), arch)
        assert key in names and arch.adapter.model_class in names, (key, names)


def test_no_other_module_names_an_architecture():
    found = _mentions()
    unexpected = {where: sorted(names) for where, names in found.items() if where not in ALLOWED}
    assert not unexpected, (
        "architecture names outside vlm_lens/architectures (move the knowledge into the "
        f"architecture's file, or read it from the registry): {unexpected}"
    )


def test_the_allow_list_is_still_needed():
    stale = set(ALLOWED) - set(_mentions())
    assert not stale, f"no longer named there, drop from ALLOWED: {sorted(stale)}"


@pytest.mark.parametrize("key", ARCHITECTURES)
def test_an_unknown_architecture_is_refused_naming_the_supported_ones(key):
    with pytest.raises(ValueError, match=f"'nope'.*{key}"):
        architectures.get("nope")


def test_newest_per_family_takes_one_of_each_family():
    chosen = architectures.newest_per_family()
    families = {a.family for a in REGISTRY.values()}
    assert sorted(REGISTRY[k].family for k in chosen) == sorted(families)
    for key in chosen:
        arch = REGISTRY[key]
        assert all(
            other.released <= arch.released
            for other in REGISTRY.values()
            if other.family == arch.family
        )


def _drop_module(name: str) -> None:
    import sys

    sys.modules.pop(f"vlm_lens.architectures.{name}", None)


def test_adding_an_architecture_is_adding_one_file(tmp_path, monkeypatch):
    """A new module beside the others (here in a second directory of the package's path)
    is discovered; one whose key differs from its file name is refused."""
    (tmp_path / "newfamily.py").write_text(
        "import dataclasses\n"
        "from vlm_lens.architectures import REGISTRY\n"
        "_base = REGISTRY['llava']\n"
        "ARCHITECTURE = dataclasses.replace(\n"
        "    _base, adapter=dataclasses.replace(_base.adapter, arch='newfamily')\n"
        ")\n"
    )
    monkeypatch.setattr(architectures, "__path__", [*architectures.__path__, str(tmp_path)])
    try:
        found = architectures._discover()
        assert list(found) == sorted([*ARCHITECTURES, "newfamily"])
        assert found["newfamily"].adapter.arch == "newfamily"
    finally:
        _drop_module("newfamily")

    (tmp_path / "newfamily.py").write_text(
        "from vlm_lens.architectures import REGISTRY\nARCHITECTURE = REGISTRY['llava']\n"
    )
    try:
        with pytest.raises(ValueError, match="newfamily.*declares the key 'llava'"):
            architectures._discover()
    finally:
        _drop_module("newfamily")
