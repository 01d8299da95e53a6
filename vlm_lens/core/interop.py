"""nnsight access to a `HookedVLM`: the same hook points, by their module paths.

`HookedVLM.to_nnsight()` returns a `VLMNNsight`: an `nnsight.NNsight` envoy tree over the
wrapped HF model (`model.hf_model`), so every module, and every vlm_lens hook point, is
reachable by its HF module path::

    nn = model.to_nnsight()
    inputs = model.prepare(images=[img], prompt="How many dots?")
    image = inputs.segments.mask("image", inputs.input_ids.shape[1] + 4)[0]   # [key]
    with nn.generate(inputs, max_new_tokens=4, min_new_tokens=4) as tracer:
        for step in tracer.iter[2]:                       # decoding step 2 only
            hp = nn.model.language_model.layers[0].self_attn.hook_pattern
            pattern = hp.output                           # [batch, head, 1, keys]
            edited = pattern.masked_fill(image[: pattern.shape[-1]], 0.0)
            hp.output = edited / edited.sum(-1, keepdim=True)
        result = tracer.result.save()                     # a GenerationResult (logits per step)

Values built inside the block survive it only if saved (`x.save()`, `nnsight.save([])` for
a list filled step by step). Prefer `tracer.iter[:n]` with `min_new_tokens=n` to the
open-ended `tracer.all()`, which leaves a request for a step that never comes (nnsight warns).

Module paths (the same for every supported architecture in transformers 5):
`model.language_model.layers[i].self_attn.hook_{q,k,v,attn_scores,pattern,z,result}`,
`model.language_model.layers[i].hook_{resid_pre,attn_out,resid_mid,mlp_out,resid_post}`,
`model.language_model.layers[i].mlp.hook_{pre,pre_linear,post}`, the norms' `hook_scale` /
`hook_normalized` (`layers[i].input_layernorm`, ..., `model.language_model.norm`),
`model.language_model.hook_embed`, and the projector's `hook_image_embeds`
(`model.visual.merger.hook_image_embeds` for Qwen, `model.multi_modal_projector.
hook_image_embeds` for Gemma3 / LLaVA). `nn.hook_path(name)` gives any of them. `nn.hook(name)`
returns the envoy of a TransformerLens name (`"blocks.-1.attn.hook_pattern"`), and
`nn.hook_path(name)` its module path.

Steps. nnsight counts each call of a module as one occurrence; `tracer.iter[k]` binds a
loop body to occurrence k. A hook point fires once per forward pass, so inside
`nn.generate` occurrence k of a `blocks.*` hook point is decoding step k (0 = prefill),
exactly `hook.run.step` of a TransformerLens-style hook. `hook_image_embeds` fires at the
prefill only.

Firing. Hook points are skipped unless something is attached (that is what keeps the fast
SDPA path); nnsight watches module calls rather than attaching hooks, so `nn.generate` and
`nn.trace` force the chosen hook points (`names=` of `to_nnsight`, default: all) to fire for
the duration of the run, and restore the previous setting after. To drive the HF model
through nnsight some other way (e.g. `nnsight.NNsight(model.hf_model)` and HF's own
`generate`), call `model.force_hooks(True)` first; nnsight's occurrences still count the
steps, but `hook.run.step` / `hook.run.segments` are only set inside the `HookedVLM`'s runs.

Cost. nnsight instruments every module of the HF model in place (a per-call wrapper that
is inert outside a trace); the `HookedVLM` keeps working, a little slower per module call.

Not for: anything nnsight does not need (hooks, recordings: `HookedVLM.generate`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import nnsight
from nnsight.intervention.envoy import traceable

if TYPE_CHECKING:
    from vlm_lens.core.generation import GenerationResult
    from vlm_lens.core.hooked_vlm import HookedVLM
    from vlm_lens.core.prepare import VLMInputs


class VLMNNsight(nnsight.NNsight):
    """An `nnsight.NNsight` over `hooked.hf_model` that runs through the `HookedVLM`.

    `generate(inputs, max_new_tokens, **kwargs)` is `HookedVLM.generate` (its
    `tracer.result` is the `GenerationResult`); `trace(inputs)` is one forward pass (its
    `tracer.result` is the HF output, `.logits` `[batch, pos, vocab]`). Both take the
    `VLMInputs` of `model.prepare(...)`, so hooks know the prompt's segments and step.
    """

    def __init__(self, hooked: HookedVLM, names: Callable[[str], bool] | None = None):
        super().__init__(hooked.hf_model)
        self._hooked = hooked
        self._force_names = names
        self._paths = {id(m): p for p, m in hooked.hf_model.named_modules() if p}

    @property
    def hooked(self) -> HookedVLM:
        return self._hooked

    def hook_path(self, name: str) -> str:
        """Module path (from the HF model) of a TransformerLens hook name."""
        module = self._hooked.hook_dict[self._hooked.resolve_hook_name(name)]
        return self._paths[id(module)]

    def hook(self, name: str) -> Any:
        """The envoy of a hook point given by its TransformerLens name (negative layers ok)."""
        return self.get(self.hook_path(name))

    @contextmanager
    def _forced(self) -> Iterator[None]:
        hooks = self._hooked.hook_dict
        previous = {name: hp.force for name, hp in hooks.items()}
        self._hooked.force_hooks(True, self._force_names)
        try:
            yield
        finally:
            for name, hp in hooks.items():
                hp.force = previous[name]

    @traceable
    def generate(
        self, inputs: VLMInputs, max_new_tokens: int = 16, **kwargs: Any
    ) -> GenerationResult:
        """`HookedVLM.generate` (greedy, with `fwd_hooks=` / `record=` if given) under nnsight."""
        with self._forced():
            return self._hooked.generate(inputs, max_new_tokens=max_new_tokens, **kwargs)

    def _forward(self, inputs: VLMInputs) -> Any:
        with self._forced():
            return self._hooked(inputs, return_type="output")

    def trace(self, *args: Any, fn: Any = None, **kwargs: Any) -> Any:
        """One forward pass of `model.prepare(...)` inputs (or `fn` as in `nnsight.Envoy.trace`)."""
        return super().trace(*args, fn=self._forward if fn is None else fn, **kwargs)


def to_nnsight(model: HookedVLM, names: Callable[[str], bool] | None = None) -> VLMNNsight:
    """See `HookedVLM.to_nnsight`."""
    return VLMNNsight(model, names)
