"""`HookedVLM`: a Hugging Face VLM behind the TransformerLens hook API.

The wrapper owns an unmodified HF model. It selects vlm_lens's attention function
for the language model only, attaches hook points inside the HF module tree, and
exposes them under TransformerLens names through `HookedRootModule`
(`run_with_hooks`, `run_with_cache`, `hooks()`, `reset_hooks`, `hook_dict`).
Layer indices may be negative wherever a hook is named; layer lists take the grammar of
`vlm_lens.core.layers`.

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
import transformers
from torch import Tensor
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from vlm_lens.adapters import Adapter, adapter_for, get_module
from vlm_lens.core import attention as _attention
from vlm_lens.core.generation import GenerationResult, generate
from vlm_lens.core.hook_points import VLMHookPoint, install
from vlm_lens.core.layers import LayerSpec, check_layer, resolve_layers
from vlm_lens.core.prepare import VLMInputs, prepare_inputs
from vlm_lens.core.recording import AttentionRecord
from vlm_lens.core.run_state import RunState
from vlm_lens.core.trace import GenerationTrace, trace_generation

_LAYER_NAME = re.compile(r"^blocks\.(-?\d+)\.(.+)$")


@dataclass(frozen=True)
class VLMConfig:
    """The language model's dimensions, named as in TransformerLens's `cfg`."""

    arch: str
    n_layers: int
    n_heads: int
    n_key_value_heads: int
    d_head: int
    d_model: int
    d_vocab: int


class ActivationCache(dict):
    """A dict of cached activations that also accepts negative layer indices in names."""

    def __init__(self, data: dict, resolve: Callable[[str], str]):
        super().__init__(data)
        self._resolve = resolve

    def __getitem__(self, name: str) -> Tensor:
        return super().__getitem__(name if dict.__contains__(self, name) else self._resolve(name))

    def __contains__(self, name: object) -> bool:
        if dict.__contains__(self, name):
            return True
        try:
            return dict.__contains__(self, self._resolve(name))  # type: ignore[arg-type]
        except (KeyError, ValueError):
            return False


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(
            f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16', 'float16' or 'auto'"
        )
    return value


class HookedVLM(HookedRootModule):
    """A hooked vision-language model (Qwen3-VL, Qwen2.5-VL, Qwen2-VL, Gemma3, LLaVA-1.5)."""

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
        self._named_hooks = install(
            layers, attns, get_module(hf_model, self.adapter.image_embeds_module), self.run_state
        )
        lm.register_forward_pre_hook(self._track_position, with_kwargs=True)

        text = lm.config
        n_heads = text.num_attention_heads
        self.cfg = VLMConfig(
            arch=self.adapter.arch,
            n_layers=len(layers),
            n_heads=n_heads,
            n_key_value_heads=getattr(text, "num_key_value_heads", None) or n_heads,
            d_head=getattr(text, "head_dim", None) or text.hidden_size // n_heads,
            d_model=text.hidden_size,
            d_vocab=text.vocab_size,
        )
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
        config = transformers.AutoConfig.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code
        )
        adapter = adapter_for(config)
        model_cls = getattr(transformers, adapter.model_class)
        kwargs: dict[str, Any] = dict(model_kwargs, trust_remote_code=trust_remote_code)
        if dtype is not None:
            kwargs["dtype"] = _resolve_dtype(dtype)
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
        return [(self.resolve_hook_name(n) if isinstance(n, str) else n, fn) for n, fn in hooks]

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

    def run_with_cache(self, *args: Any, names_filter: Any = None, **kwargs: Any):
        logits, cache = super().run_with_cache(
            *args, names_filter=self._names_filter(names_filter), **kwargs
        )
        return logits, ActivationCache(cache, self.resolve_hook_name)

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
        self, inputs: VLMInputs, return_type: str = "logits", logits_to_keep: int | None = None
    ) -> Any:
        """Logits `[batch, pos, vocab]` of the prompt (or the HF output with return_type="output").

        `logits_to_keep=k` computes the logits of the last k positions only (`pos` = k): what a
        caller needing the next-token distribution wants, as a full vocabulary times the whole
        prompt is large. None keeps every position.
        """
        if return_type not in ("logits", "output"):
            raise ValueError(f"return_type must be 'logits' or 'output', got {return_type!r}")
        extra = {} if logits_to_keep is None else {"logits_to_keep": logits_to_keep}
        with self.running(inputs) as kwargs:
            out = self.hf_model(**kwargs, use_cache=False, **extra)
        return out.logits if return_type == "logits" else out

    def force_hooks(self, enabled: bool = True, names: Callable[[str], bool] | None = None) -> None:
        """Make hook points fire even without hooks (for tools that watch module calls, e.g. nnsight)."""
        for name, hp in self.hook_dict.items():
            if names is None or names(name):
                assert isinstance(hp, VLMHookPoint)
                hp.force = enabled

    def tokens_to_text(self, tokens: Tensor | Sequence[int]) -> str:
        return self.processor.tokenizer.decode(tokens, skip_special_tokens=True)

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
