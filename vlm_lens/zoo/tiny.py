"""Tiny random-weight checkpoints of the real VLM architectures, built offline.

:func:`tiny_checkpoint` writes a directory that loads through the ordinary Hugging Face path
(``AutoConfig`` / ``AutoProcessor`` / ``AutoModelForImageTextToText`` or the concrete model
class, no ``trust_remote_code``) and needs no network: the tokenizer is a character-level one
(:mod:`vlm_lens.zoo.tokenizer`) unless ``tokenizer_dir`` gives a real one
(:mod:`vlm_lens.zoo.real_vocab`), the processors are the real processor classes configured for
tiny images, the model is the real ``*ForConditionalGeneration`` class with a tiny config.

Layout on disk: ``tiny_checkpoint(arch, directory)`` builds into ``directory/<arch>`` for the
default build (``seed=0``, no overrides) and into ``directory/<arch>-<hash>`` otherwise, so
builds with different settings never clobber each other. A complete build carries a marker file
(``vlm_lens_zoo.json``); when it is present and matches, the directory is returned as is.

Each architecture's recipe (defaults, dependent values, processor, generation tokens) is in
its file of :mod:`vlm_lens.architectures`, with the token layout of one 64x64 image.

Not for: real tokenizers (:mod:`vlm_lens.zoo.real_vocab`) or loading checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlm_lens.architectures import ARCHITECTURES, Architecture, get
from vlm_lens.architectures._recipe import merge_overrides
from vlm_lens.zoo.tokenizer import build_char_tokenizer

__all__ = [
    "ARCHITECTURES",
    "MARKER_FILE",
    "ZOO_VERSION",
    "config_and_processor",
    "merge_overrides",
    "model_class",
    "tiny_checkpoint",
]

#: Bumped whenever a change here changes what gets built; stale builds are then rebuilt.
ZOO_VERSION = 1
#: Written last into a finished build; its presence marks the checkpoint as complete.
MARKER_FILE = "vlm_lens_zoo.json"

# Overrides key that configures the image processor instead of the model config.
_IMAGE_PROCESSOR_KEY = "image_processor"


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def _reinitialise(model: nn.Module, bare_matrices: tuple[str, ...] = ()) -> None:
    """Draw every matrix-shaped weight from N(0, 1/fan_in) (uses the current torch RNG).

    HF's default init (std 0.02) leaves a tiny model nearly constant: attention is almost uniform
    and images barely move the logits. With variance-preserving weights activations keep unit
    scale, attention patterns are peaked and the image visibly changes the output. Embedding
    tables get unit-scale rows (after Gemma's sqrt(d) embedding scale). Norm weights and biases
    (1-D) keep HF's initialisation. Matrices outside such modules must be named in
    ``bare_matrices`` (parameter name suffixes, used as ``x @ W``), e.g. Gemma3's
    zero-initialised ``mm_input_projection_weight`` (PITFALLS 3); any other one is an error.
    """
    done: set[int] = set()  # tied weights (Gemma3's lm_head) are drawn once
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or id(weight) in done:
            continue
        if isinstance(module, nn.Embedding):
            std = 1.0 / float(getattr(module, "scalar_embed_scale", 1.0))
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            std = weight[0].numel() ** -0.5  # fan_in: Linear [out, in], Conv [out, in, *kernel]
        else:
            continue  # norms
        weight.normal_(0.0, std)
        done.add(id(weight))
    for name, param in model.named_parameters():
        if param.ndim < 2 or id(param) in done:
            continue
        if name.endswith(bare_matrices):
            param.normal_(0.0, param.shape[0] ** -0.5)  # used as x @ W: [d_in, d_out]
        else:
            raise AssertionError(f"no initialisation rule for {name} {tuple(param.shape)}")


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def _spec(arch: str, seed: int, overrides: Mapping, tokenizer_dir: Path | None) -> dict:
    normalised = json.loads(json.dumps(overrides, sort_keys=True, default=str))
    spec = {"arch": arch, "seed": seed, "overrides": normalised, "zoo_version": ZOO_VERSION}
    if tokenizer_dir is not None:  # a changed tokenizer file means a different build
        spec["tokenizer"] = _dir_digest(tokenizer_dir)
    return spec


def _dir_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _load_tokenizer(arch: Architecture, tokenizer_dir: Path) -> Any:
    """The tokenizer saved in ``tokenizer_dir``, checked for what the recipe relies on."""
    from transformers import AutoTokenizer

    recipe = arch.tiny
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    needed = (*recipe.eos_tokens, recipe.pad_token, recipe.bos_token, *recipe.image_tokens)
    missing = [
        t
        for t in dict.fromkeys(n for n in needed if n is not None)
        if tokenizer.convert_ids_to_tokens(tokenizer.convert_tokens_to_ids(t)) != t
    ]
    if missing:
        raise ValueError(
            f"the tokenizer in {tokenizer_dir} has no single token for {missing}, which a "
            f"{arch.adapter.model_class} checkpoint needs"
        )
    if not tokenizer.chat_template:
        raise ValueError(f"the tokenizer in {tokenizer_dir} has no chat template")
    return tokenizer


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(path: Path, spec: Mapping) -> bool:
    marker = _read_marker(path)
    return marker is not None and marker.get("spec") == spec


def config_and_processor(
    arch: str, tokenizer_dir: Path | None = None, **config_overrides: Any
) -> tuple[Any, Any]:
    """The config and processor `tiny_checkpoint` would save, built in memory (no weights):
    for building a model of any size directly, e.g. `model_cls._from_config(config)` on a GPU
    with a real checkpoint's dimensions as `config_overrides`."""
    architecture = get(arch)
    recipe = architecture.tiny
    overrides = dict(config_overrides)
    image_kwargs = overrides.pop(_IMAGE_PROCESSOR_KEY, None) or {}
    if tokenizer_dir is None:
        tokenizer = build_char_tokenizer(**recipe.char_tokenizer)
    else:
        tokenizer = _load_tokenizer(architecture, tokenizer_dir)
    config = recipe.config(tokenizer, overrides)
    return config, recipe.processor(tokenizer, config, image_kwargs)


def model_class(arch: str) -> str:
    """The transformers class name of `arch`'s model."""
    return get(arch).adapter.model_class


def _build(
    arch: str, target: Path, seed: int, overrides: Mapping, tokenizer_dir: Path | None
) -> None:
    import transformers

    recipe = get(arch).tiny
    config, processor = config_and_processor(arch, tokenizer_dir, **overrides)
    tokenizer = processor.tokenizer
    config.dtype = torch.float32

    model_cls = getattr(transformers, model_class(arch))
    with torch.random.fork_rng(devices=[]):  # deterministic, leaves the caller's RNG alone
        torch.manual_seed(seed)
        model = model_cls(config)
        _reinitialise(model, recipe.bare_matrices)
    model.eval()

    ids = tokenizer.convert_tokens_to_ids
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=ids(recipe.bos_token) if recipe.bos_token else None,
        eos_token_id=[ids(t) for t in recipe.eos_tokens],
        pad_token_id=ids(recipe.pad_token),
        do_sample=False,
    )
    model.save_pretrained(target)
    processor.save_pretrained(target)


def _make_readable(root: Path) -> None:
    """Give the build the usual 0755/0644 modes (``mkdtemp`` makes directories private)."""
    root.chmod(0o755)
    for path in root.iterdir():
        if path.is_file():
            path.chmod(0o644)


def tiny_checkpoint(
    arch: str,
    directory: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    seed: int = 0,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    **config_overrides: Any,
) -> Path:
    """Build (once) a tiny random-weight checkpoint of ``arch`` and return its directory.

    Args:
        arch: one of :data:`ARCHITECTURES` (the modules of :mod:`vlm_lens.architectures`).
        directory: parent directory. The checkpoint goes to ``directory/<arch>`` for the default
            build (``seed=0``, no overrides, character-level tokenizer), else to
            ``directory/<arch>-<hash of settings>``.
        overwrite: rebuild even if a complete checkpoint with the same settings exists.
        seed: seeds the weights; the same seed gives byte-identical safetensors.
        tokenizer_dir: a directory with a real tokenizer (``tokenizer.json``,
            ``tokenizer_config.json``) and its chat template, used instead of the
            character-level one; the vocabulary size and special token ids follow it (see
            :mod:`vlm_lens.zoo.real_vocab` for the real Qwen, Gemma3 and LLaVA ones).
        **config_overrides: merged into the model config before it is built. Nested dicts merge
            key by key, e.g. ``text_config={"hidden_size": 128, "num_hidden_layers": 6}``;
            other values replace. Dependent values follow unless given explicitly: vocab size and
            all special token ids (from the tokenizer), ``head_dim``, and what each
            architecture's recipe derives (e.g. Qwen's ``mrope_section``, the vision output
            width, Gemma3 layer types, the processors' patch/merge/image sizes and image token
            counts). The one non-config key, ``image_processor={...}``,
            is merged into the image processor's arguments (e.g. Qwen ``size={"shortest_edge":
            min_pixels, "longest_edge": max_pixels}``).

    Returns:
        The checkpoint directory: loadable with ``AutoConfig``/``AutoProcessor``/
        ``AutoModelForImageTextToText.from_pretrained`` (or the concrete model class).

    Raises:
        ValueError: unknown ``arch`` (the message lists the supported keys), inconsistent
            overrides, or a ``tokenizer_dir`` that lacks a token or chat template the
            architecture needs.
    """
    get(arch)  # an unknown arch fails here, naming the supported ones
    tokenizer_path = None if tokenizer_dir is None else Path(tokenizer_dir)
    if tokenizer_path is not None and not (tokenizer_path / "tokenizer_config.json").is_file():
        raise ValueError(f"tokenizer_dir {tokenizer_path} has no tokenizer_config.json")
    spec = _spec(arch, seed, config_overrides, tokenizer_path)
    if seed == 0 and not config_overrides and tokenizer_path is None:
        name = arch
    else:
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{arch}-{digest}"
    parent = Path(directory)
    target = parent / name
    if not overwrite and _is_complete(target, spec):
        return target

    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.building-", dir=parent))
    try:
        _build(arch, staging, seed, config_overrides, tokenizer_path)
        marker = {"spec": spec, "model_class": model_class(arch)}
        (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        _make_readable(staging)
        if target.exists():
            if not overwrite and _is_complete(target, spec):
                return target  # another process finished the same build first
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
