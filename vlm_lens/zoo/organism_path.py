"""Where the shipped counting model organism lives (``vlm_lens/zoo/organism/``).

Not for: training or evaluating it (``scripts/organism/`` in the source tree, not installed).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ORGANISM_DIR", "organism"]

#: The checkpoint directory inside the installed package.
ORGANISM_DIR = Path(__file__).resolve().parent / "organism"

_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json")


def organism() -> Path:
    """The checkpoint directory of the trained counting organism (for ``HookedVLM.from_pretrained``).

    A small Qwen3-VL trained from scratch on the dots counting task plus paired yes/no questions
    (by ``scripts/organism/train.py`` of the source tree; its ``training.json`` records how and
    what it scored).

    Raises:
        FileNotFoundError: the weights are not in the package (e.g. a checkout without them);
            the message says how to rebuild them.
    """
    missing = [name for name in _REQUIRED if not (ORGANISM_DIR / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the model organism is missing from {ORGANISM_DIR} ({', '.join(missing)} not found); "
            f"rebuild it from a source checkout with `python -m scripts.organism.train --out "
            f"{ORGANISM_DIR}` or reinstall vlm_lens with its package data"
        )
    return ORGANISM_DIR
