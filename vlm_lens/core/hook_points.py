"""Hook points inside the HF module tree, and their TransformerLens names.

Each decoder layer gets `hook_resid_pre` / `hook_resid_post`, each language-model
attention module gets `hook_q` / `hook_k` / `hook_v` / `hook_attn_scores` /
`hook_pattern` / `hook_z` (fired by `vlm_lens.core.attention`), and the image projector gets `hook_image_embeds`.
They are ordinary submodules, so nnsight and plain PyTorch see them too; they
hold no parameters, so state dicts and `save_pretrained` are unchanged.

Not for: deciding what a hook does (users) or how attention is computed (attention.py).
"""

from __future__ import annotations

import torch
from transformer_lens.hook_points import HookPoint

from vlm_lens.core.run_state import RunState

ATTN_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z")
RESID_HOOKS = ("hook_resid_pre", "hook_resid_post")


class VLMHookPoint(HookPoint):
    """A TransformerLens `HookPoint` that also knows the run it fires in (`hook.run`).

    `force = True` makes the attention function call it even with no hook attached
    (for tools such as nnsight that observe module calls rather than hooks).
    """

    def __init__(self, run: RunState, layer_idx: int | None = None):
        super().__init__()
        self.run = run  # shared with every hook point of the model; not a submodule, not saved
        self.layer_idx = layer_idx
        self.force = False

    def fires(self) -> bool:
        # torch keeps a module's forward hooks in this private dict (no public getter); empty
        # means the hook point is the identity and its call can be skipped.
        return bool(self._forward_hooks) or self.force


def _resid_pre(layer: torch.nn.Module, args: tuple, kwargs: dict):
    hp: VLMHookPoint = layer.hook_resid_pre
    if not hp.fires():
        return None
    if args:
        return (hp(args[0]), *args[1:]), kwargs
    kwargs["hidden_states"] = hp(kwargs["hidden_states"])
    return args, kwargs


def _resid_post(layer: torch.nn.Module, args: tuple, output):
    hp: VLMHookPoint = layer.hook_resid_post
    if not hp.fires():
        return None
    if isinstance(output, tuple):  # older decoder layers return (hidden, ...)
        return (hp(output[0]), *output[1:])
    return hp(output)


def _image_embeds(module: torch.nn.Module, args: tuple, output):
    hp: VLMHookPoint = module.hook_image_embeds
    if not hp.fires():
        return None
    tensor = output if isinstance(output, torch.Tensor) else output[0]
    # Projectors emit [n_images, tokens, d] (LLaVA, Gemma3) or [tokens, d] (Qwen): the hook
    # always sees [image_tokens, d_model], in the order the tokens appear in the prompt.
    flat = hp(tensor.reshape(-1, tensor.shape[-1])).reshape(tensor.shape)
    return flat if isinstance(output, torch.Tensor) else (flat, *output[1:])


def install(
    layers: list[torch.nn.Module],
    attn_modules: list[torch.nn.Module],
    projector: torch.nn.Module,
    run: RunState,
) -> dict[str, VLMHookPoint]:
    """Attach hook points (idempotent) and return them by TransformerLens name."""
    named: dict[str, VLMHookPoint] = {}
    for i, (layer, attn) in enumerate(zip(layers, attn_modules)):
        if not hasattr(layer, "hook_resid_pre"):
            for name in RESID_HOOKS:
                layer.add_module(name, VLMHookPoint(run, i))
            layer.register_forward_pre_hook(_resid_pre, with_kwargs=True)
            layer.register_forward_hook(_resid_post)
        if not hasattr(attn, "hook_pattern"):
            for name in ATTN_HOOKS:
                attn.add_module(name, VLMHookPoint(run, i))
        for name in RESID_HOOKS:
            named[f"blocks.{i}.{name}"] = getattr(layer, name)
        for name in ATTN_HOOKS:
            named[f"blocks.{i}.attn.{name}"] = getattr(attn, name)
    if not hasattr(projector, "hook_image_embeds"):
        projector.add_module("hook_image_embeds", VLMHookPoint(run))
        projector.register_forward_hook(_image_embeds)
    named["hook_image_embeds"] = projector.hook_image_embeds
    # TransformerLens sorts hooks by name order of insertion: keep forward order.
    ordered = {"hook_image_embeds": named.pop("hook_image_embeds")}
    ordered.update(named)
    for name, hp in ordered.items():
        hp.name = name
    return ordered
