"""A tiny character-level tokenizer built offline with the `tokenizers` library.

Every character of :data:`CHARSET` (printable ASCII plus ``\\n`` and ``\\t``) is exactly one
token, so every digit is its own token (as in Qwen's tokenizers) and words such as "Yes"/"No"
need nothing special. Special tokens are matched whole before the character model runs.
Characters outside the charset become the unknown token.

The result is a :class:`transformers.PreTrainedTokenizerFast` (``TokenizersBackend`` in
transformers 5), which every processor class of the zoo accepts and which saves/loads through
the ordinary ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` path.

The function is deliberately generic so it can be reused for a trained "organism" model.

Not for: real vocabularies (`vlm_lens.zoo.real_vocab`) or anything a reported number
depends on: it exists so tiny models can be built offline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

__all__ = ["CHARSET", "build_char_tokenizer"]

#: The ordinary (non-special) tokens: printable ASCII (space .. ``~``), newline and tab.
#: ``\n`` must be a token or chat-template newlines become ``<unk>`` (PITFALLS 7).
CHARSET: str = "".join(chr(c) for c in range(32, 127)) + "\n\t"


def build_char_tokenizer(
    *,
    leading_special_tokens: Sequence[str] = (),
    trailing_special_tokens: Sequence[str] = (),
    bos_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
    unk_token: str = "<unk>",
    named_special_tokens: Mapping[str, str] | None = None,
    add_bos_token: bool = False,
    chat_template: str | None = None,
    extra_chars: str = "",
) -> PreTrainedTokenizerFast:
    """Build a character-level fast tokenizer.

    Ids are laid out as ``leading_special_tokens``, then the characters of :data:`CHARSET`
    (followed by ``extra_chars``), then ``trailing_special_tokens``; this lets a tokenizer mirror
    where the real model keeps its special tokens (Gemma/Llama at the start, Qwen at the end).

    Args:
        leading_special_tokens: special tokens given the lowest ids, in order.
        trailing_special_tokens: special tokens given the highest ids, in order.
        bos_token, eos_token, pad_token, unk_token: the named special tokens (each must be one
            of the special tokens; ``unk_token`` is added as a trailing token if absent).
        named_special_tokens: model-specific named tokens, e.g. ``{"image_token": "<image>"}``;
            they become attributes of the tokenizer (``tok.image_token``, ``tok.image_token_id``)
            and are saved in ``tokenizer_config.json``, which is how processors find them.
        add_bos_token: prepend ``bos_token`` when encoding with ``add_special_tokens=True``
            (Gemma and Llama tokenizers do, Qwen's do not).
        chat_template: a Jinja chat template stored on the tokenizer.
        extra_chars: more single-character tokens appended after :data:`CHARSET`.
    """
    named = dict(named_special_tokens or {})
    leading = list(leading_special_tokens)
    trailing = list(trailing_special_tokens)
    if unk_token not in leading and unk_token not in trailing:
        trailing.append(unk_token)
    specials = leading + trailing
    declared = [t for t in (bos_token, eos_token, pad_token, *named.values()) if t is not None]
    missing = [t for t in declared if t not in specials]
    if missing:
        raise ValueError(f"named special tokens {missing} are not among the special tokens")
    chars = list(dict.fromkeys(CHARSET + extra_chars))
    pieces = leading + chars + trailing
    if len(set(pieces)) != len(pieces):
        raise ValueError("special tokens and characters must be distinct")
    vocab = {piece: idx for idx, piece in enumerate(pieces)}

    # A BPE model without merges splits every word into its characters: a character-level model.
    # No normalizer and no pre-tokenizer, so whitespace (incl. "\n") is kept verbatim.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unk_token))
    backend.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False)
            for t in specials
        ]
    )
    backend.decoder = decoders.Fuse()  # concatenate pieces back without separators

    kwargs: dict = {"unk_token": unk_token, "add_bos_token": add_bos_token, "add_eos_token": False}
    if bos_token is not None:
        kwargs["bos_token"] = bos_token
    if eos_token is not None:
        kwargs["eos_token"] = eos_token
    if pad_token is not None:
        kwargs["pad_token"] = pad_token
    if named:
        kwargs["extra_special_tokens"] = named
    if chat_template is not None:
        kwargs["chat_template"] = chat_template
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    if len(tokenizer) != len(pieces):  # nothing may have been appended behind our back
        raise AssertionError(f"tokenizer has {len(tokenizer)} tokens, expected {len(pieces)}")
    return tokenizer
