"""Tiny random-weight checkpoints of the supported VLM architectures, built offline.

>>> from vlm_lens import zoo
>>> path = zoo.tiny_checkpoint("qwen3_vl", "/tmp/zoo")  # doctest: +SKIP

See :func:`tiny_checkpoint` for the layout on disk and how to override the config.
"""

from vlm_lens.zoo.tiny import ARCHITECTURES, tiny_checkpoint
from vlm_lens.zoo.tokenizer import CHARSET, build_char_tokenizer

__all__ = ["ARCHITECTURES", "CHARSET", "build_char_tokenizer", "tiny_checkpoint"]
