"""Which model a study runs when the user names none: the organism, else a tiny zoo model.

Both studies (and their commands) fall back the same way: the trained organism
(`vlm_lens.zoo.organism()`) when it is available, otherwise a tiny random-weight qwen3_vl
zoo checkpoint built once under a cache folder, returned with the study's own note saying
that its numbers only show that the pipeline runs.

Not for: loading a named model (`HookedVLM.from_pretrained`, `vlm_lens.cli._common`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TINY_NAME = "tiny-qwen3_vl-untrained"


def default_model(
    untrained_note: str, cache_dir: str | os.PathLike | None = None, *, organism: str = "organism"
) -> tuple[Any, str, str | None]:
    """`(model_or_path, name, note)`: the organism with note None, or the tiny checkpoint's
    path with `untrained_note` (printed). `cache_dir` defaults to `$VLM_LENS_CACHE/zoo`,
    else ~/.cache/vlm_lens/zoo; `organism` is how the printed notice names the organism.
    Each study binds its own note (`functools.partial`): one function for both."""
    from vlm_lens import zoo

    build = getattr(zoo, "organism", None)
    if build is not None:
        try:
            return build(), "organism", None
        except Exception as err:  # not trained / not shipped yet: fall back, and say why
            print(f"note: the {organism} is not available ({type(err).__name__}: {err})")
    if cache_dir is None:
        root = os.environ.get("VLM_LENS_CACHE", str(Path.home() / ".cache" / "vlm_lens"))
        cache_dir = Path(root) / "zoo"
    print(untrained_note)
    return zoo.tiny_checkpoint("qwen3_vl", cache_dir), TINY_NAME, untrained_note
