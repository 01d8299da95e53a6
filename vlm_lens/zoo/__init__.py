"""Checkpoints built or shipped offline: tiny random-weight models and the trained organism.

>>> from vlm_lens import zoo
>>> path = zoo.tiny_checkpoint("qwen3_vl", "/tmp/zoo")  # doctest: +SKIP
>>> path = zoo.organism()  # the shipped dots-counting Qwen3-VL  # doctest: +SKIP

See :func:`tiny_checkpoint` for the layout on disk and how to override the config,
:mod:`vlm_lens.zoo.real_vocab` for tiny checkpoints around the real tokenizers, chat templates
and processor settings (fetched with npm), and :func:`organism` / :mod:`vlm_lens.zoo.train` for
the trained model organism.
"""

from vlm_lens.zoo.organism_path import organism
from vlm_lens.zoo.tiny import ARCHITECTURES, tiny_checkpoint
from vlm_lens.zoo.tokenizer import CHARSET, build_char_tokenizer

__all__ = ["ARCHITECTURES", "CHARSET", "build_char_tokenizer", "organism", "tiny_checkpoint"]
