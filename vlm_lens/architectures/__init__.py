"""The supported architectures: one module per architecture, the registry built from them.

Each public module here (`qwen3_vl.py`, `gemma3.py`, ...) defines one :class:`Architecture`
named ``ARCHITECTURE``: its adapter record (module paths, grid function), its tiny-checkpoint
recipe and its real-vocabulary specifics. Modules starting with ``_`` are shared machinery or
family bases (`_qwen`). The registry imports every public module of this package, so adding
an architecture is adding one file; its key is its checkpoints' `config.model_type`, which
must also be the file name.

>>> from vlm_lens import architectures
>>> architectures.get("llava").adapter.model_class
'LlavaForConditionalGeneration'

Not for: loading or hooking models (`vlm_lens.core`), building checkpoints (`vlm_lens.zoo`).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from vlm_lens.architectures._base import (
    Adapter,
    Architecture,
    NpmPackage,
    RealVocab,
    RealVocabUnavailable,
    TinyRecipe,
    get_module,
    no_deepstack,
)

__all__ = [
    "ARCHITECTURES",
    "REGISTRY",
    "Adapter",
    "Architecture",
    "NpmPackage",
    "RealVocab",
    "RealVocabUnavailable",
    "TinyRecipe",
    "adapter_for",
    "get",
    "get_module",
    "module_names",
    "newest_per_family",
    "no_deepstack",
]


def module_names() -> list[str]:
    """The architecture modules of this package (public ones, sorted)."""
    return sorted(
        info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")
    )


def _discover() -> dict[str, Architecture]:
    found: dict[str, Architecture] = {}
    for name in module_names():
        module = importlib.import_module(f"{__name__}.{name}")
        arch = getattr(module, "ARCHITECTURE", None)
        if not isinstance(arch, Architecture):
            raise TypeError(f"{module.__name__} defines no ARCHITECTURE = Architecture(...)")
        if arch.key != name:
            raise ValueError(f"{module.__name__} declares the key {arch.key!r}; name it {name}.py")
        found[name] = arch
    return found


#: Every supported architecture by key (`config.model_type`), in file-name order.
REGISTRY: dict[str, Architecture] = _discover()
#: The supported architecture keys (also the parametrisation list of the test-suite).
ARCHITECTURES: tuple[str, ...] = tuple(REGISTRY)


def newest_per_family() -> tuple[str, ...]:
    """The newest architecture of each family (by `released`), in registry order: the set the
    slower tests run on, one per family base."""
    newest: dict[str, Architecture] = {}
    for arch in REGISTRY.values():
        if arch.family not in newest or arch.released > newest[arch.family].released:
            newest[arch.family] = arch
    chosen = {arch.key for arch in newest.values()}
    return tuple(key for key in REGISTRY if key in chosen)


def _supported() -> str:
    return ", ".join(f"{key} ({arch.title})" for key, arch in REGISTRY.items())


def get(key: str) -> Architecture:
    """The architecture `key`, or a ValueError naming the supported ones."""
    if key not in REGISTRY:
        raise ValueError(f"unknown architecture {key!r}; supported: {_supported()}")
    return REGISTRY[key]


def adapter_for(config: Any) -> Adapter:
    """The adapter of a checkpoint's config (`model_type`), or a ValueError naming the supported ones."""
    model_type = getattr(config, "model_type", None)
    if model_type not in REGISTRY:
        raise ValueError(
            f"unsupported architecture {model_type!r}; vlm_lens supports {_supported()}"
        )
    return REGISTRY[model_type].adapter
