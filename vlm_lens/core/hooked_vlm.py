"""`HookedVLM`: a Hugging Face VLM behind the TransformerLens hook API.

The wrapper owns an unmodified HF model. It selects vlm_lens's attention function
for the language model only, attaches hook points inside the HF module tree, and
exposes them under TransformerLens names through `HookedRootModule`
(`run_with_hooks`, `run_with_cache`, `hooks()`, `add_hook`, `reset_hooks`, `list_hooks`,
`hook_dict`; forward and backward hooks). Layer indices may be negative wherever a hook is
named; layer lists take the grammar of `vlm_lens.core.layers`.

What TransformerLens's analysis code reads off a model is here too, so its
`ActivationCache` methods work on a VLM (`vlm_lens.core.cache`): `cfg` (n_layers, n_heads,
d_model, d_head, d_mlp, d_vocab, device, normalization_type, use_attn_result),
`W_U` / `b_U` / `W_O` / `blocks[L]` / `ln_final` (`vlm_lens.core.weights`),
`tokens_to_residual_directions`, `to_single_token`, and the tokenizer helpers `to_tokens`,
`to_str_tokens` (image tokens labelled `<img{i} r{row}c{col}>`), `to_string`.

`with model.running(inputs) as kwargs:` is the one public way to drive the HF model by
hand: it gives the HF keyword arguments and tells the hook points the prompt's layout.
`forward`, `vlm_lens.core.generation`, `vlm_lens.core.trace`, `vlm_lens.core.interop` and
`vlm_lens.patching` all run through it (they import nothing from this module at run time;
`generate`, `trace_generation` and `to_nnsight` here are thin methods over them).

Not for: per-step recording policies or studies (see `vlm_lens.core.recording`
and `vlm_lens.studies`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from vlm_lens.adapters import Adapter, adapter_for, get_module
from vlm_lens.core import attention as _attention
from vlm_lens.core.cache import ActivationCache
from vlm_lens.core.generation import GenerationResult, generate
from vlm_lens.core.hook_points import NO_SEQUENCE_AXIS, VLMHookPoint, install
from vlm_lens.core.layers import LayerSpec, check_layer, resolve_layers
from vlm_lens.core.prepare import VLMInputs, prepare_inputs
from vlm_lens.core.recording import AttentionRecord
from vlm_lens.core.run_state import RunState
from vlm_lens.core.segments import KIND_GENERATED, KIND_IMAGE, KIND_TEXT
from vlm_lens.core.trace import GenerationTrace, trace_generation
from vlm_lens.core.weights import (
    AttentionWeights,
    BlockWeights,
    FinalNorm,
    MLPWeights,
    folded_rows,
    folded_unembed,
)

__all__ = ["ActivationCache", "HookedVLM", "VLMConfig"]

_LAYER_NAME = re.compile(r"^blocks\.(-?\d+)\.(.+)$")
RETURN_TYPES = ("logits", "loss", "both", None, "output")


@dataclass
class VLMConfig:
    """The language model's dimensions and settings, named as in TransformerLens's `cfg`.

    `normalization_type` is "RMSPre": RMSNorms whose `hook_normalized` is before the weight
    (TransformerLens's folded convention; the final norm's weight is folded into `W_U`).
    `device` / `dtype`: where the inputs go (the embedding's device; updated by `.to()`).
    """

    arch: str
    n_layers: int
    n_heads: int
    n_key_value_heads: int
    d_head: int
    d_model: int
    d_vocab: int
    d_mlp: int
    device: torch.device
    dtype: torch.dtype
    use_attn_result: bool = False
    normalization_type: str = "RMSPre"
    final_rms: bool = True
    attn_only: bool = False
    positional_embedding_type: str = "rotary"


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(
            f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16', 'float16' or 'auto'"
        )
    return value


def _looks_like_path(text: str) -> bool:
    # A hub id is "name" or "org/name"; anything else with a slash, or a leading ".", "/" or
    # "~", can only be a folder (transformers would call it a malformed repo id).
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text


def checkpoint_config(
    name_or_path: str | Path, trust_remote_code: bool = False
) -> transformers.PretrainedConfig:
    """The transformers config of a checkpoint (hub id or local folder), no weights read.

    Errors name the reference: a path that does not exist, a folder without config.json, a
    hub id that is neither cached nor reachable.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"model {text!r} is a file; give the checkpoint's folder")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model folder {text!r} has no config.json: not a transformers checkpoint"
            )
    elif isinstance(name_or_path, Path) or _looks_like_path(text):
        raise FileNotFoundError(f"model {text!r}: no such folder (a hub id looks like org/name)")
    try:
        return transformers.AutoConfig.from_pretrained(text, trust_remote_code=trust_remote_code)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OSError(f"model {text!r}: not a local folder and not loadable ({first})") from err


class HookedVLM(HookedRootModule):
    """A hooked vision-language model of any architecture in `vlm_lens.architectures`."""

    def __init__(self, hf_model: torch.nn.Module, processor: Any, adapter: Adapter | None = None):
        super().__init__()
        self.adapter = adapter or adapter_for(hf_model.config)
        self.hf_model = hf_model.eval()
        self.processor = processor
        self.run_state = RunState()

        lm = get_module(hf_model, self.adapter.language_model)
        layers = list(get_module(lm, self.adapter.layers))
        attns = [get_module(layer, self.adapter.attention) for layer in layers]
        # The public setter (it validates the name against AttentionInterface); the language
        # model shares its config object with the top-level model's text config.
        lm.set_attn_implementation(_attention.ATTENTION_NAME)
        self._lm = [lm]  # a list keeps it out of the module tree (it is inside hf_model already)
        text = lm.config
        n_heads = text.num_attention_heads
        self._named_hooks = install(hf_model, self.adapter, self.run_state, n_heads)
        lm.register_forward_pre_hook(self._track_position, with_kwargs=True)

        a = self.adapter
        mlps = [get_module(layer, a.mlp) for layer in layers]
        self.cfg = VLMConfig(
            arch=a.arch,
            n_layers=len(layers),
            n_heads=n_heads,
            n_key_value_heads=getattr(text, "num_key_value_heads", None) or n_heads,
            d_head=getattr(text, "head_dim", None) or text.hidden_size // n_heads,
            d_model=text.hidden_size,
            d_vocab=text.vocab_size,
            d_mlp=get_module(mlps[0], a.mlp_down).in_features,
            device=self.input_device,
            dtype=self.dtype,
        )
        # Views, not submodules: the weights stay where HF keeps them (a list or a plain
        # object is not registered in the module tree).
        self.blocks = [
            BlockWeights(
                AttentionWeights(get_module(attn, a.o_proj), n_heads),
                MLPWeights(*(get_module(mlp, p) for p in (a.mlp_gate, a.mlp_up, a.mlp_down))),
            )
            for attn, mlp in zip(attns, mlps)
        ]
        final = get_module(lm, a.final_norm)
        self._final_norm = [final]
        self.ln_final = FinalNorm(
            float(getattr(final, a.norm_eps)),
            self._named_hooks["ln_final.hook_scale"],
            self._named_hooks["ln_final.hook_normalized"],
        )
        self.set_use_attn_result(False)
        self.setup()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        device_map: str | dict | None = None,
        trust_remote_code: bool = False,
        processor: Any = None,
        **model_kwargs: Any,
    ) -> HookedVLM:
        """Load a checkpoint (hub id or local dir) with the real transformers classes.

        `dtype` ("float32", "bfloat16", torch.bfloat16, "auto"), `device` ("cuda", "cpu") and
        `device_map` ("auto", or a dict of module name -> device) are passed to transformers;
        give either `device` or `device_map`, not both.
        """
        if device is not None and device_map is not None:
            raise ValueError("give either device or device_map, not both")
        config = checkpoint_config(name_or_path, trust_remote_code)
        adapter = adapter_for(config)
        model_cls = getattr(transformers, adapter.model_class)
        kwargs: dict[str, Any] = dict(model_kwargs, trust_remote_code=trust_remote_code)
        if dtype is not None:
            kwargs["dtype"] = resolve_dtype(dtype)
        if device_map is not None:
            kwargs["device_map"] = device_map
        hf_model = model_cls.from_pretrained(name_or_path, config=config, **kwargs)
        if device is not None:
            hf_model = hf_model.to(device)
        if processor is None:
            processor = transformers.AutoProcessor.from_pretrained(
                name_or_path, trust_remote_code=trust_remote_code
            )
        return cls(hf_model, processor, adapter)

    # ------------------------------------------------------------------ names
    def setup(self) -> None:
        """Register hook points under their TransformerLens names (and HF modules under theirs)."""
        self.mod_dict = {name: module for name, module in self.hf_model.named_modules() if name}
        self.hook_dict: dict[str, HookPoint] = dict(self._named_hooks)
        self.mod_dict.update(self.hook_dict)

    def resolve_hook_name(self, name: str) -> str:
        """Canonical hook name: negative layers counted from the last; unknown names raise."""
        if name in self.hook_dict:
            return name
        match = _LAYER_NAME.match(name)
        if match:
            layer = self.resolve_layer(int(match.group(1)))
            canonical = f"blocks.{layer}.{match.group(2)}"
            if canonical in self.hook_dict:
                return canonical
        close = difflib.get_close_matches(name, list(self.hook_dict), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(
            f"unknown hook point {name!r}{hint} (see model.hook_dict for all {len(self.hook_dict)} names)"
        )

    def resolve_layer(self, layer: int) -> int:
        """A non-negative layer index (negative counts from the last); out of range raises."""
        return check_layer(layer, self.cfg.n_layers)

    def resolve_layers(self, layers: LayerSpec) -> list[int]:
        """Sorted layer indices of a layer spec (-1, "Q4", "20:28", "all", a list ...; None = all).

        The grammar is `vlm_lens.core.layers`'.
        """
        return resolve_layers(layers, self.cfg.n_layers)

    def _names_filter(self, names_filter: Any) -> Any:
        if isinstance(names_filter, str):
            return [self.resolve_hook_name(names_filter)]
        if isinstance(names_filter, (list, tuple)):
            return [self.resolve_hook_name(n) for n in names_filter]
        return names_filter

    def _resolved(self, hooks: Any) -> list[tuple[Any, Callable]]:
        out = [(self.resolve_hook_name(n) if isinstance(n, str) else n, fn) for n, fn in hooks]
        for name, _ in out:
            if isinstance(name, str):
                self._check_enabled(name)
        return out

    def _check_enabled(self, name: str) -> None:
        hp = self.hook_dict[name]
        if isinstance(hp, VLMHookPoint) and not hp.enabled:
            # AssertionError, as TransformerLens raises for a hook on a switched-off point.
            raise AssertionError(
                f"cannot hook {name}: per-head results are off; call "
                "model.set_use_attn_result(True) first (as in TransformerLens)"
            )

    def check_hooks_to_add(self, hook_point: Any, hook_point_name: str, *args: Any, **kwargs: Any):
        self._check_enabled(hook_point_name)

    # TransformerLens's public entry points for named hooks (run_with_hooks and run_with_cache
    # call hooks()); names are resolved before any hook is attached.
    @contextmanager
    def hooks(
        self,
        fwd_hooks: Any = (),
        bwd_hooks: Any = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ):
        fwd, bwd = self._resolved(fwd_hooks), self._resolved(bwd_hooks)
        with super().hooks(fwd, bwd, reset_hooks_end, clear_contexts) as model:
            yield model

    def add_hook(
        self, name: str | Callable, hook: Callable, dir: str = "fwd", **kwargs: Any
    ) -> None:  # noqa: A002
        super().add_hook(
            self.resolve_hook_name(name) if isinstance(name, str) else name, hook, dir, **kwargs
        )

    def list_hooks(self, name_filter: Any = None, *args: Any, **kwargs: Any) -> dict:
        return super().list_hooks(self._names_filter(name_filter), *args, **kwargs)

    def run_with_cache(
        self,
        *args: Any,
        names_filter: Any = None,
        remove_batch_dim: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, ActivationCache]:
        """TransformerLens's `run_with_cache`; the cache is a TransformerLens `ActivationCache`
        (`vlm_lens.core.cache`). `incl_bwd=True` needs a scalar: `return_type="loss"`."""
        inputs = args[0] if args else kwargs.get("inputs")
        segments = inputs.segments if isinstance(inputs, VLMInputs) else None
        if remove_batch_dim and segments is not None and segments.batch_size != 1:
            raise AssertionError(
                f"Cannot remove batch dimension from cache with batch size {segments.batch_size}:"
                " remove_batch_dim=True needs one example"
            )
        out, cache = super().run_with_cache(
            *args,
            names_filter=self._names_filter(names_filter),
            remove_batch_dim=remove_batch_dim,
            **kwargs,
        )
        tokens = inputs.input_ids if segments is not None else None
        return out, ActivationCache(cache, self, not remove_batch_dim, segments, tokens)

    def get_caching_hooks(
        self,
        names_filter: Any = None,
        incl_bwd: bool = False,
        device: Any = None,
        remove_batch_dim: bool = False,
        cache: dict | None = None,
        pos_slice: Any = None,
    ) -> tuple[dict, list, list]:
        """TransformerLens's caching hooks, except that `pos_slice` and `remove_batch_dim` leave
        `hook_image_embeds` alone: it has neither axis (`[image_tokens, d_model]`)."""
        names_filter = self._names_filter(names_filter)
        if names_filter is None or callable(names_filter):
            wanted: Callable[[str], bool] = names_filter or (lambda name: True)
        else:
            wanted = set(names_filter).__contains__
        cache = {} if cache is None else cache

        def live(name: str) -> bool:  # a switched-off point (attn.hook_result) caches nothing
            return wanted(name) and getattr(self.hook_dict[name], "enabled", True)

        base = super().get_caching_hooks
        _, fwd, bwd = base(
            lambda n: n not in NO_SEQUENCE_AXIS and live(n),
            incl_bwd,
            device,
            remove_batch_dim,
            cache,
            pos_slice,
        )
        _, fwd_flat, bwd_flat = base(
            lambda n: n in NO_SEQUENCE_AXIS and live(n), incl_bwd, device, False, cache, None
        )
        return cache, fwd + fwd_flat, bwd + bwd_flat

    # ------------------------------------------------------------------ inputs
    @property
    def input_device(self) -> torch.device:
        return self.hf_model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf_model.parameters()).dtype

    def prepare(
        self,
        images: Any = None,
        prompt: str | Sequence[str] = "",
        system: str | None = None,
        chat_template: bool = True,
    ) -> VLMInputs:
        """Processor inputs with `segments` for one prompt or a left-padded batch.

        `images`: for one prompt, an image or a list of images (PIL, path or array);
        for a list of prompts, one entry per prompt (image, list of images, or None).
        Images go before the text unless the prompt marks their places with "<image>".
        `system`: an optional system prompt. `chat_template=False` takes `prompt` as
        the model's raw text (with the processor's own image placeholders).
        """
        if not isinstance(prompt, str) and not (
            isinstance(prompt, Sequence) and all(isinstance(t, str) for t in prompt)
        ):
            raise TypeError(f"prompt must be a string or a list of strings, got {prompt!r}")
        return prepare_inputs(
            self.processor,
            self.adapter,
            self.hf_model.config,
            images,
            prompt,
            system,
            chat_template,
        )

    # ------------------------------------------------------------------ running
    def _track_position(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Before each language-model call: where do this call's query rows sit, which step is it.

        The KV cache is found by type, not by keyword: transformers has passed it as
        `past_key_values=` and, since 5.2x, as `cache=` (PITFALLS 12). Its length before this
        call is the number of positions already processed.
        """
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = kwargs.get("input_ids", args[0] if args else None)
        cache = next(
            (v for v in (*args, *kwargs.values()) if isinstance(v, transformers.Cache)), None
        )
        past = int(cache.get_seq_length()) if cache is not None else 0
        run = self.run_state
        run.query_start, run.n_queries = past, int(embeds.shape[1])
        prompt_len = run.segments.prompt_len if run.segments is not None else past
        run.step = 0 if past == 0 else past - prompt_len + 1

    @contextmanager
    def running(self, inputs: VLMInputs) -> Iterator[dict[str, Tensor]]:
        """Run the HF model by hand on `model.prepare(...)` inputs::

            with model.running(inputs) as kwargs, model.hooks(fwd_hooks=hooks):
                out = model.hf_model.generate(**kwargs, max_new_tokens=4)

        Yields the HF keyword arguments: every tensor the processor returned (PITFALLS 4), on
        the embedding's device, floating ones in the model's dtype. For the duration, the hook
        points know the prompt's segments (`hook.run.segments`), which steps and interventions
        need; the previous segments come back after, so runs may nest.
        """
        if not isinstance(inputs, VLMInputs):
            raise TypeError(
                f"expected the output of model.prepare(...), got {type(inputs).__name__}; "
                "vlm_lens needs the inputs' segments"
            )
        dtype, device = self.dtype, self.input_device
        kwargs = {
            name: (t.to(dtype=dtype) if t.is_floating_point() else t).to(device)
            for name, t in inputs.tensors.items()
        }
        previous = self.run_state.segments
        self.run_state.segments = inputs.segments
        try:
            yield kwargs
        finally:
            self.run_state.segments = previous

    def forward(
        self,
        inputs: VLMInputs,
        return_type: str | None = "logits",
        logits_to_keep: int | None = None,
        loss_per_token: bool = False,
    ) -> Any:
        """One forward pass of `model.prepare(...)` inputs.

        `return_type` (TransformerLens's): "logits" `[batch, pos, vocab]`; "loss" (see
        `loss_fn`: next-token loss over the text positions); "both" `(logits, loss)`; None
        (nothing: for hooks and caches); "output" (HF's output object).
        `logits_to_keep=k` computes the logits of the last k positions only (`pos` = k): what a
        caller needing the next-token distribution wants, as a full vocabulary times the whole
        prompt is large. None keeps every position.
        """
        if return_type not in RETURN_TYPES:
            raise ValueError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}")
        if logits_to_keep is not None and return_type in ("loss", "both"):
            raise ValueError("the loss needs every position's logits: drop logits_to_keep")
        extra = {} if logits_to_keep is None else {"logits_to_keep": logits_to_keep}
        with self.running(inputs) as kwargs:
            out = self.hf_model(**kwargs, use_cache=False, **extra)
        if return_type in ("output", None):
            return out if return_type == "output" else None
        if return_type == "logits":
            return out.logits
        loss = self.loss_fn(out.logits, inputs, per_token=loss_per_token)
        return loss if return_type == "loss" else (out.logits, loss)

    def loss_fn(
        self,
        logits: Float[Tensor, "batch pos vocab"],
        inputs: VLMInputs,
        per_token: bool = False,
    ) -> Float[Tensor, ""] | Float[Tensor, "batch pos_minus_1"]:
        """Next-token cross-entropy over the text positions of `inputs`.

        Position p predicts token p + 1; it counts when that *target* is a text token (the
        user's words, the chat template's delimiters and assistant header) or a generated /
        teacher-forced answer token (`vlm_lens.patching.with_answer_prefix`). Targets that are
        image placeholders, system-prompt tokens (BOS, header, system prompt) or padding are
        excluded: nothing predicts them. Returns the mean over counted positions, or with
        `per_token=True` the loss at every position `[batch, pos - 1]`, 0 where not counted.
        """
        tokens = inputs.input_ids.to(logits.device)
        kinds = inputs.segments.key_kinds(tokens.shape[1], logits.device)[:, 1:]
        counted = (kinds == KIND_TEXT) | (kinds == KIND_GENERATED)
        if not counted.any():
            raise ValueError("the inputs have no text token after the first position: no loss")
        per = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), tokens[:, 1:], reduction="none"
        )
        per = per.masked_fill(~counted, 0.0)
        return per if per_token else per.sum() / counted.sum()

    def force_hooks(self, enabled: bool = True, names: Callable[[str], bool] | None = None) -> None:
        """Make hook points fire even without hooks (for tools that watch module calls, e.g. nnsight)."""
        for name, hp in self.hook_dict.items():
            if names is None or names(name):
                assert isinstance(hp, VLMHookPoint)
                hp.force = enabled

    def tokens_to_text(self, tokens: Tensor | Sequence[int]) -> str:
        return self.processor.tokenizer.decode(tokens, skip_special_tokens=True)

    def _apply(self, *args: Any, **kwargs: Any) -> HookedVLM:
        # .to() / .cuda() / .half() all come through here: keep cfg.device / cfg.dtype true.
        out = super()._apply(*args, **kwargs)
        if hasattr(self, "cfg"):
            self.cfg.device, self.cfg.dtype = self.input_device, self.dtype
        return out

    # ------------------------------------------------------------------ TransformerLens parity
    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Switch `blocks.{L}.attn.hook_result` on or off (off by default, as in TransformerLens).

        On, each layer's output projection is computed per head: `hook_result[b, p, h]` is
        `z[b, p, h] @ W_O[h]`, what head h adds to the residual stream; its sum over heads (+
        the projection's bias, if any) is `hook_attn_out`. It costs a `[batch, pos, head,
        d_model]` tensor per layer. Gemma3 normalises the attention output before adding it
        to the residual stream, so no per-head split sums to it: switching on raises there.
        """
        if use_attn_result and self.adapter.sandwich_norms:
            raise ValueError(
                f"use_attn_result is undefined on {self.cfg.arch}: its attention output passes "
                "post_attention_layernorm before joining the residual stream, so per-head terms "
                "cannot sum to hook_attn_out; use hook_z (per head, before the output projection)"
            )
        self.cfg.use_attn_result = bool(use_attn_result)
        for name, hp in self._named_hooks.items():
            if name.endswith(".attn.hook_result"):
                hp.enabled = self.cfg.use_attn_result

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def to_tokens(
        self,
        input: str | Sequence[str] | VLMInputs,  # noqa: A002 - TransformerLens's name
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        move_to_device: bool = True,
    ) -> Int[Tensor, "batch pos"]:
        """Token ids `[batch, pos]`: of prepared inputs (images expanded to their placeholder
        tokens), or of plain text (no chat template, no images).

        Unlike TransformerLens, text gets no BOS unless `prepend_bos=True`: in a VLM the chat
        template places the BOS, and text tokenized alone is usually an answer or a snippet.
        A list of texts is padded on `padding_side` (default: the tokenizer's).
        """
        if isinstance(input, VLMInputs):
            tokens = input.input_ids
        else:
            texts = [input] if isinstance(input, str) else list(input)
            if not texts or not all(isinstance(t, str) for t in texts):
                raise TypeError("to_tokens takes a string, a list of strings or prepared inputs")
            rows = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
            if prepend_bos:
                bos = self.tokenizer.bos_token_id
                if bos is None:
                    raise ValueError("prepend_bos=True, but this tokenizer has no BOS token")
                rows = [[bos, *row] for row in rows]  # before padding: left padding stays first
            kwargs = {} if padding_side is None else {"padding_side": padding_side}
            tokens = self.tokenizer.pad(
                {"input_ids": rows}, padding=True, return_tensors="pt", **kwargs
            )["input_ids"]
        return tokens.to(self.cfg.device) if move_to_device else tokens

    def _token_text(self, token: int) -> str:
        return self.tokenizer.decode([int(token)], clean_up_tokenization_spaces=False)

    def to_str_tokens(
        self,
        input: str | Sequence[str] | VLMInputs | Tensor | Sequence[int] | int,  # noqa: A002
        prepend_bos: bool | None = None,
    ) -> list[str] | list[list[str]]:
        """One string per token, as TransformerLens's `to_str_tokens` (a list of lists for a
        batch). For prepared inputs, each image token reads `<img{i} r{row}c{col}>` (image i of
        the row, its place in the image's merged token grid) and special tokens show as their
        text (`<|im_start|>`, `<bos>`, padding as the pad token); ids alone carry no layout,
        so an image placeholder id reads as its token text."""
        if isinstance(input, VLMInputs):
            rows = [self._labelled_row(input, r) for r in range(input.segments.batch_size)]
            return rows[0] if len(rows) == 1 else rows
        if (
            isinstance(input, (str, list, tuple))
            and input
            and all(isinstance(t, str) for t in ([input] if isinstance(input, str) else input))
        ):
            tokens = self.to_tokens(input, prepend_bos=prepend_bos, move_to_device=False)
            rows = [[self._token_text(t) for t in row] for row in tokens.tolist()]
            return rows[0] if isinstance(input, str) else rows
        tokens = torch.as_tensor(input)
        if tokens.ndim == 0:
            return [self._token_text(int(tokens))]
        if tokens.ndim == 1 or tokens.shape[0] == 1:
            return [self._token_text(t) for t in tokens.reshape(-1).tolist()]
        return [[self._token_text(t) for t in row] for row in tokens.tolist()]

    def _labelled_row(self, inputs: VLMInputs, row: int) -> list[str]:
        ids = inputs.input_ids[row].tolist()
        labels = [self._token_text(t) for t in ids]
        kinds = inputs.segments.kinds[row]
        for i, span in enumerate(inputs.segments.samples[row].images):
            h, w = span.grid
            for k, pos in enumerate(range(span.start, span.end)):
                if kinds[pos] == KIND_IMAGE:
                    labels[pos] = f"<img{i} r{k // w}c{k % w}>"
        return labels

    def to_string(self, tokens: Tensor | Sequence[int] | int) -> str | list[str]:
        """Decoded text of token ids (special tokens kept); a list of strings for a batch."""
        tokens = torch.as_tensor(tokens)
        decode = lambda ids: self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)  # noqa: E731
        if tokens.ndim <= 1:
            return decode(tokens.reshape(-1).tolist())
        return [decode(row) for row in tokens.tolist()]

    def to_single_token(self, string: str) -> int:
        """The id of a string that is one token (no special tokens added); else ValueError."""
        ids = self.tokenizer(string, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{string!r} is {len(ids)} tokens, not one: {ids}")
        return int(ids[0])

    @property
    def _lm_head(self) -> torch.nn.Linear:
        return get_module(self.hf_model, self.adapter.lm_head)

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        """The unembedding with the final norm's weight folded in (a new tensor per access):
        `ln_final.hook_normalized @ W_U + b_U` are the logits (before any logit softcap)."""
        return folded_unembed(self._lm_head, self._final_norm[0], self.adapter.norm_weight_offset)

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        head = self._lm_head
        if head.bias is not None:
            return head.bias
        return torch.zeros(head.out_features, dtype=head.weight.dtype, device=head.weight.device)

    @property
    def W_O(self) -> Float[Tensor, "layer head d_head d_model"]:
        return torch.stack([block.attn.W_O for block in self.blocks])

    @property
    def b_O(self) -> Float[Tensor, "layer d_model"]:
        return torch.stack([block.attn.b_O for block in self.blocks])

    def tokens_to_residual_directions(
        self, tokens: str | int | Int[Tensor, "..."]
    ) -> Float[Tensor, "... d_model"]:
        """Columns of `W_U` as residual-stream directions: `[d_model]` for one token, else
        `[*tokens.shape, d_model]` (TransformerLens's semantics)."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        tokens = torch.as_tensor(tokens)
        if tokens.numel() == 1:
            tokens = tokens.reshape(())
        return folded_rows(
            self._lm_head, self._final_norm[0], self.adapter.norm_weight_offset, tokens
        )

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, " d_model"]:
        """Sum of the attention (and MLP) output biases of the layers before `layer` (and of
        `layer`'s attention if `mlp_input`): zero for the five supported architectures."""
        bias = torch.zeros(self.cfg.d_model, dtype=self.dtype, device=self.cfg.device)
        for i in range(layer + (1 if mlp_input else 0)):
            bias = bias + self.blocks[i].attn.b_O.to(bias.device)
            if include_mlp_biases and i < layer:
                bias = bias + self.blocks[i].mlp.b_out.to(bias.device)
        return bias

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The ids that end generation (the checkpoint's generation config; an int or a list)."""
        eos = self.hf_model.generation_config.eos_token_id
        if eos is None:
            return ()
        return tuple(int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]))

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        inputs: VLMInputs,
        max_new_tokens: int = 16,
        fwd_hooks: Sequence[tuple[Any, Any]] = (),
        record: AttentionRecord | None = None,
        keep_logits: bool = True,
        **generate_kwargs: Any,
    ) -> GenerationResult:
        """Greedy generation (HF's own loop, with the KV cache) with hooks attached for every step.

        Hooks read `hook.run.step` (0 = prefill, k = k-th decoding step) and
        `hook.run.segments`. `record=AttentionRecord(...)` keeps slim per-step attention.
        Returns a `GenerationResult`. Batches (left-padded by `prepare`) give each row the same
        tokens and records as running it alone. On GPUs, load with `device_map="auto"`: hooks
        and recordings follow each layer's device (see `vlm_lens.core.generation.generate`).
        """
        return generate(
            self, inputs, max_new_tokens, fwd_hooks, record, keep_logits, **generate_kwargs
        )

    def trace_generation(
        self,
        images: Any,
        prompt: str,
        layers: LayerSpec = None,
        max_new_tokens: int = 16,
        system: str | None = None,
        **kwargs: Any,
    ) -> GenerationTrace:
        """Generate for one prompt and trace every step: a `GenerationTrace` with the tokens
        and their text, per-step logits / probabilities, per step x layer x head the attention
        of the predicting row to each image as a grid (`trace.images[i]`: `[step, layer, head,
        h, w]`) and its share on system / image / text / generated keys (`trace.shares`:
        `[step, layer, head, 4]`). One prompt per call; batches: `generate(record=...)`.
        More options (`heads="mean"`, `fwd_hooks=`): `vlm_lens.core.trace.trace_generation`.
        """
        return trace_generation(
            self, images, prompt, layers, max_new_tokens, system=system, **kwargs
        )

    def to_nnsight(self, names: Callable[[str], bool] | None = None):
        """An `nnsight.NNsight` wrapper of `hf_model` whose runs go through this model.

        `nn.generate(inputs, max_new_tokens)` / `nn.trace(inputs)` force the hook points
        selected by `names` (a filter on TransformerLens names; default all) to fire during
        the run, so they are visible to nnsight at their module paths, e.g.
        `nn.model.language_model.layers[i].self_attn.hook_pattern` (or `nn.hook("blocks.i.attn.
        hook_pattern")`); `tracer.iter[k]` is decoding step k. See `vlm_lens.core.interop`.
        """
        # Imported here, not at the top, so that only its users pay for importing nnsight
        # (interop imports nothing from this module at run time: no circle).
        from vlm_lens.core.interop import to_nnsight

        return to_nnsight(self, names)
