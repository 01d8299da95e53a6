"""Checkpoints built or shipped offline: tiny random-weight models and the trained organism.

>>> from vlm_lens import zoo
>>> path = zoo.tiny_checkpoint(zoo.ARCHITECTURES[0], "/tmp/zoo")  # doctest: +SKIP
>>> path = zoo.organism()  # the shipped dots-counting Qwen3-VL  # doctest: +SKIP

See :func:`tiny_checkpoint` for the layout on disk and how to override the config,
:mod:`vlm_lens.zoo.real_vocab` for tiny checkpoints around the real tokenizers, chat templates
and processor settings (fetched with npm), and :func:`organism` for the trained model organism
(trained and evaluated by the scripts in `scripts/organism/` of the source tree, which are not
part of the installed package). The names load on first use (`vlm_lens._lazy`): `zoo.organism()`
does not import transformers.

Not for: loading checkpoints (`HookedVLM.from_pretrained`) or training them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlm_lens._lazy import lazy_names

if TYPE_CHECKING:
    from vlm_lens.zoo.organism_path import organism
    from vlm_lens.zoo.tiny import ARCHITECTURES, tiny_checkpoint
    from vlm_lens.zoo.tokenizer import CHARSET, build_char_tokenizer

_HOMES = {
    "ARCHITECTURES": "vlm_lens.zoo.tiny",
    "CHARSET": "vlm_lens.zoo.tokenizer",
    "build_char_tokenizer": "vlm_lens.zoo.tokenizer",
    "organism": "vlm_lens.zoo.organism_path",
    "tiny_checkpoint": "vlm_lens.zoo.tiny",
}
__all__ = ["ARCHITECTURES", "CHARSET", "build_char_tokenizer", "organism", "tiny_checkpoint"]
__getattr__, __dir__ = lazy_names(__name__, _HOMES)
