"""`ActivationCache`: TransformerLens's activation cache over a `HookedVLM` run.

`model.run_with_cache(inputs)` returns one. It is `transformer_lens.ActivationCache` (a
subclass: every method of the installed TransformerLens works, `cache["pattern", -1]`,
`accumulated_resid`, `decompose_resid`, `stack_head_results`, `apply_ln_to_stack`,
`logit_attrs`, `remove_batch_dim`, ...), plus what a VLM needs:

- names with negative layers (`cache["blocks.-1.attn.hook_pattern"]`, `in` too);
- `cache.segments` / `cache.tokens`: the prompt's layout (system / image / text positions)
  and token ids `[batch, pos]`, for grouping and labelling positions;
- Qwen3-VL's deepstack additions (visual features the language model adds to the image
  positions after its first layers, `blocks.{L}.hook_deepstack`) are components of the
  residual stream: `decompose_resid` (mode "all", with embeddings) lists them as
  `"{L}_deepstack"`, after layer L's MLP, so the components still sum to the residual stream;
- `hook_image_embeds` has no batch axis (`[image_tokens, d_model]`): batch slicing leaves it;
- per-head results are refused on Gemma3, whose attention output passes a norm before it
  joins the residual stream (a sum of per-head terms cannot equal it).

Not for: running the model (`HookedVLM.run_with_cache`) or storing per-step generation
records (`vlm_lens.core.recording`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens import ActivationCache as TLActivationCache
from transformer_lens.utilities import Slice

from vlm_lens.core.hook_points import NO_SEQUENCE_AXIS
from vlm_lens.core.segments import Segments

if TYPE_CHECKING:
    from vlm_lens.core.hooked_vlm import HookedVLM


def _tl_slice(value: Any) -> Slice:
    return value if isinstance(value, Slice) else Slice(value)


class ActivationCache(TLActivationCache):
    """TransformerLens's `ActivationCache` for a `HookedVLM` (see the module docstring)."""

    model: HookedVLM

    def __init__(
        self,
        cache_dict: dict[str, torch.Tensor],
        model: HookedVLM,
        has_batch_dim: bool = True,
        segments: Segments | None = None,
        tokens: Int[Tensor, "batch pos"] | None = None,
    ):
        super().__init__(cache_dict, model, has_batch_dim=has_batch_dim)
        self.segments, self.tokens = segments, tokens

    # ------------------------------------------------------------------ names
    def _canonical(self, key: Any) -> Any:
        if isinstance(key, str) and key not in self.cache_dict and key.startswith("blocks."):
            try:
                return self.model.resolve_hook_name(key)
            except KeyError:
                return key  # not a hook name: TransformerLens's shorthand lookup decides
        return key

    def __getitem__(self, key: Any) -> torch.Tensor:
        return super().__getitem__(self._canonical(key))

    def __contains__(self, key: object) -> bool:
        try:
            return self._canonical(key) in self.cache_dict
        except IndexError:
            return False

    # ------------------------------------------------------------------ batch axis
    def remove_batch_dim(self, *args: Any, **kwargs: Any) -> ActivationCache:
        if self.has_batch_dim and self.segments is not None and self.segments.batch_size != 1:
            raise AssertionError(
                f"Cannot remove batch dimension from cache with batch size "
                f"{self.segments.batch_size}: the cache holds a batch, not one example"
            )
        super().remove_batch_dim(*args, **kwargs)
        return self

    def apply_slice_to_batch_dim(self, batch_slice: Any) -> ActivationCache:
        batch_slice = _tl_slice(batch_slice)
        unbatched = {k: v for k, v in self.cache_dict.items() if k in NO_SEQUENCE_AXIS}
        batched = {k: v for k, v in self.cache_dict.items() if k not in NO_SEQUENCE_AXIS}
        sliced = TLActivationCache(batched, self.model, self.has_batch_dim)
        sliced = sliced.apply_slice_to_batch_dim(batch_slice)
        segments, tokens = self.segments, self.tokens
        if segments is not None and tokens is not None and self.has_batch_dim:
            rows = batch_slice.apply(torch.arange(segments.batch_size)).reshape(-1).tolist()
            segments, tokens = segments.select(rows), tokens[rows]
        return ActivationCache(
            {**sliced.cache_dict, **unbatched}, self.model, sliced.has_batch_dim, segments, tokens
        )

    # ------------------------------------------------------------------ decompositions
    def _deepstack_stack(self, layer: int, pos_slice: Any) -> tuple[list[torch.Tensor], list[str]]:
        """Deepstack additions that reach the input of `layer`, with their labels."""
        components, labels = [], []
        for name in self.model.hook_dict:
            if name.endswith(".hook_deepstack"):
                after = int(name.split(".")[1])
                if after < layer:
                    components.append(pos_slice.apply(self[name], dim=-2))
                    labels.append(f"{after}_deepstack")
        return components, labels

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice: Any = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Any:
        pos_slice = _tl_slice(pos_slice)
        stack, labels = super().decompose_resid(
            layer, mlp_input, mode, False, pos_slice, incl_embeds, return_labels=True
        )
        full_layer = self.model.cfg.n_layers if layer is None or layer == -1 else layer
        extra, extra_labels = self._deepstack_stack(full_layer, pos_slice)
        if extra and mode == "all" and incl_embeds:
            parts = list(stack.unbind(0))
            for component, label in zip(extra, extra_labels):
                after = label.split("_")[0]
                at = labels.index(f"{after}_mlp_out") + 1
                parts.insert(at, component)
                labels.insert(at, label)
            stack = torch.stack(parts, dim=0)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice, mlp_input=mlp_input)
        return (stack, labels) if return_labels else stack

    def get_full_resid_decomposition(self, *args: Any, **kwargs: Any) -> Any:
        if any(name.endswith(".hook_deepstack") for name in self.model.hook_dict):
            raise NotImplementedError(
                "get_full_resid_decomposition has no place for Qwen3-VL's deepstack additions "
                "(visual features added to the residual stream between layers), so its "
                "components would not sum to the residual stream; use decompose_resid (which "
                "lists them as '{L}_deepstack') or stack_head_results(incl_remainder=True)"
            )
        return super().get_full_resid_decomposition(*args, **kwargs)

    def _check_head_results(self) -> None:
        if self.model.adapter.sandwich_norms:
            raise ValueError(
                f"per-head results are undefined on {self.model.cfg.arch}: its attention output "
                "passes a norm (post_attention_layernorm) before joining the residual stream, so "
                "no sum of per-head terms equals hook_attn_out; decompose by hook_attn_out "
                "(decompose_resid) or by hook_z instead"
            )

    def compute_head_results(self) -> None:
        self._check_head_results()
        super().compute_head_results()

    def stack_head_results(self, *args: Any, **kwargs: Any) -> Any:
        self._check_head_results()
        return super().stack_head_results(*args, **kwargs)
