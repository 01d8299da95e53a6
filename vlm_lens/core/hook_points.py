"""Hook points inside the HF module tree, and their TransformerLens names.

Per decoder layer L (`blocks.{L}.` + the name; module paths from the adapter)::

    hook_resid_pre                          input of the layer
      ln1.hook_scale, ln1.hook_normalized   the norm before attention
      attn.hook_q/k/v/attn_scores/pattern/z fired by vlm_lens.core.attention
      attn.hook_result                      per head: z_h @ W_O[h]  (opt-in, set_use_attn_result)
    hook_attn_out                           what attention adds to the residual stream
    hook_resid_mid                          resid_pre + attn_out
      ln2.hook_scale, ln2.hook_normalized   the norm before the MLP
      mlp.hook_pre                          gate projection (before the activation)
      mlp.hook_pre_linear                   up projection
      mlp.hook_post                         act(gate) * up, the input of the down projection
    hook_mlp_out                            what the MLP adds to the residual stream
    hook_resid_post                         output of the layer
    hook_deepstack                          Qwen3-VL only, first layers: the visual features
                                            the language model adds after the layer

and once: `hook_image_embeds` (the projector's output, `[image_tokens, d_model]`, no batch
or sequence axis), `hook_embed` (the language model's input embeddings: token embeddings
with the image embeddings in place), `ln_final.hook_scale`, `ln_final.hook_normalized`.

Conventions (TransformerLens's, where a VLM allows them):
- Norms are RMSNorms, `out = normalized * weight` with `normalized = x / scale` and
  `scale = sqrt(mean(x^2) + eps)` (`[batch, pos, 1]`): `hook_normalized` is before the
  weight, as in a TransformerLens model loaded with `fold_ln` (the final norm's weight is
  folded into `HookedVLM.W_U`).
- Gated MLPs follow TransformerLens's gated MLP: `hook_pre` is the gate's pre-activation.
- Gemma3 normalises attention and MLP outputs before adding them ("sandwich" norms):
  `hook_attn_out` / `hook_mlp_out` are after those norms (what joins the residual stream).
- Edits flow on: an edit at `hook_resid_mid` reaches the MLP and the residual stream.

Cost: a hook point is fired by a torch hook on an HF module (a *site*), and a site is
installed only while one of its hook points has a hook (forward or backward) or is forced,
so an unhooked model runs HF's modules untouched. Hook points hold no parameters: state
dicts and `save_pretrained` are unchanged. They are ordinary submodules, so nnsight and
plain PyTorch see them too.

Returns are checked where every hook point is called (`VLMHookPoint.__call__`): a hook that
returns a new tensor must keep its input's shape, dtype and device exactly (a `[b, 1, q, k]`
pattern that would broadcast is refused) and bring no NaN or infinity where the input was
finite (`-inf` stays allowed at `hook_attn_scores`, the usual way to mask a key). A hook that
returns None or its input pays nothing; otherwise the check is a comparison of metadata and one
float32 sum of the result (a finite sum proves every element finite; only a non-finite sum
looks element by element). `VLMHookPoint.check_returns = False` turns it off (benchmarks
measure it: benchmarks/RESULTS.md).

Not for: deciding what a hook does (users) or how attention is computed (attention.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from vlm_lens.adapters import Adapter, get_module
from vlm_lens.core.run_state import RunState

ATTN_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z")
NORM_HOOKS = ("hook_scale", "hook_normalized")
MLP_HOOKS = ("hook_pre", "hook_pre_linear", "hook_post")
NO_SEQUENCE_AXIS = ("hook_image_embeds",)
"""Hook points whose tensor has neither a batch nor a sequence axis."""


class HookReturnError(ValueError):
    """A hook returned a tensor that cannot replace the one it was given."""


def check_return(name: str, given: Tensor, returned: Any) -> None:
    """Refuse a hook's result that differs from its input in type, shape, dtype or device, or
    holds NaN / infinity where the input was finite (see the module docstring)."""
    where = f"hook at {name!r} returned"
    if not isinstance(returned, Tensor):
        raise HookReturnError(f"{where} a {type(returned).__name__}; return a tensor or None")
    if (returned.shape, returned.dtype, returned.device) != (
        given.shape,
        given.dtype,
        given.device,
    ):
        raise HookReturnError(
            f"{where} {list(returned.shape)} {returned.dtype} on {returned.device} for an input "
            f"of {list(given.shape)} {given.dtype} on {given.device}; a hook must return its "
            "input's shape, dtype and device (nothing is broadcast or cast)"
        )
    if not returned.is_floating_point() or returned.device.type == "meta":
        return
    # One sum instead of an element-wise test: on CPU it is ~30x cheaper than
    # isfinite(x).all(), and any NaN or infinity makes the sum non-finite.
    if torch.isfinite(returned.sum(dtype=torch.float32)):
        return
    bad = ~torch.isfinite(returned) & torch.isfinite(given)
    if name.endswith("hook_attn_scores"):
        bad &= returned != float("-inf")  # a masked key
    if bool(bad.any()):
        raise HookReturnError(
            f"{where} {int(bad.sum())} NaN/infinite values where its input "
            f"{list(given.shape)} {given.dtype} was finite (first at index "
            f"{tuple(bad.nonzero()[0].tolist())})"
        )


class VLMHookPoint(HookPoint):
    """A TransformerLens `HookPoint` that also knows the run it fires in (`hook.run`).

    `force = True` makes it fire even with no hook attached (for tools such as nnsight that
    observe module calls rather than attaching hooks). `enabled = False` keeps it silent
    whatever is attached (TransformerLens's opt-in points, e.g. `attn.hook_result`).
    What its hooks return is checked (`check_return`) unless `check_returns` is False.
    """

    check_returns: bool = True

    def __init__(self, run: RunState, layer_idx: int | None = None):
        super().__init__()
        self.run = run  # shared with every hook point of the model; not a submodule, not saved
        self.layer_idx = layer_idx
        self._sites: list[Site] = []
        self._force = False
        self._enabled = True

    @property
    def force(self) -> bool:
        return self._force

    @force.setter
    def force(self, value: bool) -> None:
        self._force = bool(value)
        self._sync()

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = bool(value)
        self._sync()

    def __call__(self, x: Tensor) -> Tensor:
        out = super().__call__(x)
        if out is not x and self.check_returns:
            check_return(self.name or "unnamed hook point", x, out)
        return out

    def fires(self) -> bool:
        # torch keeps a module's hooks in these private dicts (no public getter); empty means the
        # hook point is the identity and its call can be skipped. A backward hook counts: the
        # point must be called in the forward pass for the gradient to reach it.
        return self._enabled and (
            bool(self._forward_hooks) or bool(self._backward_hooks) or self._force
        )

    def add_hook(self, hook: Any, *args: Any, **kwargs: Any) -> None:
        if not callable(hook):
            raise TypeError(
                f"the hook for {self.name!r} must be a function fn(tensor, hook), got {hook!r}"
            )
        super().add_hook(hook, *args, **kwargs)

    # Every way a hook arrives (TransformerLens's add_hook, plain torch) goes through these two.
    def register_forward_hook(self, *args: Any, **kwargs: Any):
        handle = super().register_forward_hook(*args, **kwargs)
        self._sync()
        return handle

    def register_full_backward_hook(self, *args: Any, **kwargs: Any):
        handle = super().register_full_backward_hook(*args, **kwargs)
        self._sync()
        return handle

    def remove_hooks(self, *args: Any, **kwargs: Any) -> None:
        super().remove_hooks(*args, **kwargs)
        self._sync()

    def _sync(self) -> None:
        for site in self._sites:
            site.sync()


class Site:
    """A torch hook on an HF module that fires some hook points, installed while any fires."""

    def __init__(self, module: torch.nn.Module, fn: Callable, points: list, pre: bool = False):
        self.module, self.fn, self.pre = module, fn, pre
        self.points: list[VLMHookPoint] = [p for p in points if p is not None]
        self.handle: Any = None
        for point in self.points:
            point._sites.append(self)

    def sync(self) -> None:
        live = any(p.fires() for p in self.points)
        if live and self.handle is None:
            if self.pre:
                self.handle = self.module.register_forward_pre_hook(self._call, with_kwargs=True)
            else:
                self.handle = self.module.register_forward_hook(self._call)
        elif not live and self.handle is not None:
            self.handle.remove()
            self.handle = None

    def _call(self, *args: Any) -> Any:
        if not any(p.fires() for p in self.points):
            # A hook was removed behind TransformerLens's back (handle.remove()): stop paying.
            self.sync()
            return None
        return self.fn(*args)


def _main(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_main(args: tuple, kwargs: dict, x: Tensor) -> tuple[tuple, dict]:
    if args:
        return (x, *args[1:]), kwargs
    kwargs["hidden_states"] = x
    return args, kwargs


def _tensor(output: Any) -> Tensor:
    return output if isinstance(output, Tensor) else output[0]


def _with_tensor(output: Any, x: Tensor) -> Any:
    return x if isinstance(output, Tensor) else (x, *output[1:])


def _rms_site(norm: torch.nn.Module, adapter: Adapter, scale_hp: VLMHookPoint, normed_hp):
    """Fire `hook_scale` / `hook_normalized` of an RMSNorm and rebuild its output from them."""
    eps = float(getattr(norm, adapter.norm_eps))
    offset = adapter.norm_weight_offset

    def fn(module: torch.nn.Module, args: tuple, output: Tensor) -> Tensor:
        x = args[0]
        xf = x.float()
        var = xf.pow(2).mean(-1, keepdim=True) + eps
        normalized = xf * torch.rsqrt(var)  # HF's order of operations when the scale is untouched
        if scale_hp.fires():
            scale: Float[Tensor, "batch pos 1"] = torch.sqrt(var).to(x.dtype)
            hooked = scale_hp(scale)
            if hooked is not scale:
                normalized = xf / hooked.float()
        if normed_hp.fires():
            normalized = normed_hp(normalized.to(x.dtype)).float()
        return (normalized * (offset + module.weight.float())).to(x.dtype)

    return fn


def _output_site(hp: VLMHookPoint):
    def fn(module: torch.nn.Module, args: tuple, output: Any) -> Any:
        return _with_tensor(output, hp(_tensor(output)))

    return fn


def _image_embeds(hp: VLMHookPoint):
    def fn(module: torch.nn.Module, args: tuple, output: Any) -> Any:
        tensor = _tensor(output)
        # Projectors emit [n_images, tokens, d] (LLaVA, Gemma3) or [tokens, d] (Qwen): the hook
        # always sees [image_tokens, d_model], in the order the tokens appear in the prompt.
        flat = hp(tensor.reshape(-1, tensor.shape[-1])).reshape(tensor.shape)
        return _with_tensor(output, flat)

    return fn


def _embed(hp: VLMHookPoint):
    def fn(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if kwargs.get("inputs_embeds") is None:
            raise RuntimeError(
                "hook_embed: the language model was called without inputs_embeds; vlm_lens "
                "fires hook_embed on the embeddings the VLM passes to its language model"
            )
        kwargs["inputs_embeds"] = hp(kwargs["inputs_embeds"])
        return args, kwargs

    return fn


def _head_results(hp: VLMHookPoint, n_heads: int):
    """`attn.hook_result`: the output projection split by head; its sum over heads (+ bias)
    replaces the projection's output."""

    def fn(module: torch.nn.Module, args: tuple, output: Tensor) -> Tensor:
        z = args[0].unflatten(-1, (n_heads, -1))  # [batch, pos, head, d_head]
        w_o = rearrange(module.weight, "m (h d) -> h d m", h=n_heads)
        result: Float[Tensor, "batch pos head d_model"] = hp(torch.einsum("bphd,hdm->bphm", z, w_o))
        out = result.sum(-2)
        return out if module.bias is None else out + module.bias

    return fn


class _Stash:
    """Tensors one site leaves for a later site of the same forward pass (then dropped)."""

    def __init__(self) -> None:
        self.resid_pre: Tensor | None = None
        self.resid_post: Tensor | None = None


def _layer_sites(
    hp: dict[str, VLMHookPoint], stash: _Stash, prev_ds: VLMHookPoint | None, prev_stash: _Stash
) -> tuple[Callable, Callable]:
    """The decoder layer's own sites: before it (resid_pre, and the previous layer's deepstack
    addition, which arrives between the layers) and after it (resid_post)."""
    resid_pre, resid_mid, resid_post = (
        hp["hook_resid_pre"],
        hp["hook_resid_mid"],
        hp["hook_resid_post"],
    )
    deepstack = hp.get("hook_deepstack")

    def before(module: torch.nn.Module, args: tuple, kwargs: dict):
        x = original = _main(args, kwargs)
        if prev_ds is not None and prev_ds.fires() and prev_stash.resid_post is not None:
            post, prev_stash.resid_post = prev_stash.resid_post, None
            x = post + prev_ds(x - post)
        if resid_pre.fires():
            x = resid_pre(x)
        if resid_mid.fires():
            stash.resid_pre = x
        return None if x is original else _with_main(args, kwargs, x)

    def after(module: torch.nn.Module, args: tuple, output: Any) -> Any:
        x = original = _tensor(output)
        if resid_post.fires():
            x = resid_post(x)
        if deepstack is not None and deepstack.fires():
            stash.resid_post = x
        return None if x is original else _with_tensor(output, x)

    return before, after


def _attn_out_site(attn_out: VLMHookPoint, resid_mid: VLMHookPoint, stash: _Stash):
    def fn(module: torch.nn.Module, args: tuple, output: Any) -> Any:
        a = original = _tensor(output)
        if attn_out.fires():
            a = attn_out(a)
        if resid_mid.fires() and stash.resid_pre is not None:
            # The layer adds what this module returns to resid_pre: returning mid' - resid_pre
            # makes the residual stream (and the MLP's input) the edited mid'.
            r, stash.resid_pre = stash.resid_pre, None
            a = resid_mid(r + a) - r
        return None if a is original else _with_tensor(output, a)

    return fn


def _deepstack_into_norm(ds: VLMHookPoint, stash: _Stash):
    """The last layer's deepstack addition (only if every layer gets one) lands before the norm."""

    def fn(module: torch.nn.Module, args: tuple, kwargs: dict):
        if stash.resid_post is None:
            return None
        post, stash.resid_post = stash.resid_post, None
        x = _main(args, kwargs)
        return _with_main(args, kwargs, post + ds(x - post))

    return fn


def install(
    hf_model: torch.nn.Module, adapter: Adapter, run: RunState, n_heads: int
) -> dict[str, VLMHookPoint]:
    """Attach hook points and their sites (idempotent) and return them by TransformerLens name,
    in the order a forward pass fires them."""
    lm = get_module(hf_model, adapter.language_model)
    layers = list(get_module(lm, adapter.layers))
    fresh = not hasattr(lm, "hook_embed")

    def point(module: torch.nn.Module, attr: str, layer: int | None = None) -> VLMHookPoint:
        if fresh:
            module.add_module(attr, VLMHookPoint(run, layer))
        return getattr(module, attr)

    projector = get_module(hf_model, adapter.image_embeds_module)
    named: dict[str, VLMHookPoint] = {
        "hook_image_embeds": point(projector, "hook_image_embeds"),
        "hook_embed": point(lm, "hook_embed"),
    }
    if fresh:
        Site(projector, _image_embeds(named["hook_image_embeds"]), [named["hook_image_embeds"]])
        Site(lm, _embed(named["hook_embed"]), [named["hook_embed"]], pre=True)

    n_deepstack = min(adapter.deepstack(hf_model.config), len(layers))
    prev_ds, prev_stash = None, _Stash()
    for i, layer in enumerate(layers):
        attn = get_module(layer, adapter.attention)
        mlp = get_module(layer, adapter.mlp)
        ln1, ln2 = get_module(layer, adapter.ln1), get_module(layer, adapter.ln2)
        hp: dict[str, VLMHookPoint] = {"hook_resid_pre": point(layer, "hook_resid_pre", i)}
        prefix = f"blocks.{i}."
        for ln_name, ln in (("ln1", ln1), ("ln2", ln2)):
            for attr in NORM_HOOKS:
                hp[f"{ln_name}.{attr}"] = point(ln, attr, i)
        for attr in (*ATTN_HOOKS, "hook_result"):
            hp[f"attn.{attr}"] = point(attn, attr, i)
        for attr in ("hook_attn_out", "hook_resid_mid"):
            hp[attr] = point(layer, attr, i)
        for attr in MLP_HOOKS:
            hp[f"mlp.{attr}"] = point(mlp, attr, i)
        for attr in ("hook_mlp_out", "hook_resid_post"):
            hp[attr] = point(layer, attr, i)
        if i < n_deepstack:
            hp["hook_deepstack"] = point(layer, "hook_deepstack", i)
        # Forward order: resid_pre, ln1, attention, result, attn_out, mid, ln2, mlp, ...
        order = [
            "hook_resid_pre",
            *(f"ln1.{a}" for a in NORM_HOOKS),
            *(f"attn.{a}" for a in (*ATTN_HOOKS, "hook_result")),
            "hook_attn_out",
            "hook_resid_mid",
            *(f"ln2.{a}" for a in NORM_HOOKS),
            *(f"mlp.{a}" for a in MLP_HOOKS),
            "hook_mlp_out",
            "hook_resid_post",
            *(["hook_deepstack"] if "hook_deepstack" in hp else []),
        ]
        named.update({prefix + key: hp[key] for key in order})

        if fresh:
            stash = _Stash()
            before, after = _layer_sites(hp, stash, prev_ds, prev_stash)
            Site(layer, before, [hp["hook_resid_pre"], hp["hook_resid_mid"], prev_ds], pre=True)
            Site(layer, after, [hp["hook_resid_post"], hp.get("hook_deepstack")])
            for ln_name, ln in (("ln1", ln1), ("ln2", ln2)):
                scale, normed = hp[f"{ln_name}.hook_scale"], hp[f"{ln_name}.hook_normalized"]
                Site(ln, _rms_site(ln, adapter, scale, normed), [scale, normed])
            Site(
                get_module(layer, adapter.attn_out),
                _attn_out_site(hp["hook_attn_out"], hp["hook_resid_mid"], stash),
                [hp["hook_attn_out"], hp["hook_resid_mid"]],
            )
            result = hp["attn.hook_result"]
            Site(get_module(attn, adapter.o_proj), _head_results(result, n_heads), [result])
            for attr, part in (("hook_pre", adapter.mlp_gate), ("hook_pre_linear", adapter.mlp_up)):
                point_ = hp[f"mlp.{attr}"]
                Site(get_module(mlp, part), _output_site(point_), [point_])
            post = hp["mlp.hook_post"]
            Site(
                get_module(mlp, adapter.mlp_down),
                lambda module, args, kwargs, post=post: ((post(args[0]), *args[1:]), kwargs),
                [post],
                pre=True,
            )
            mlp_out = hp["hook_mlp_out"]
            Site(get_module(layer, adapter.mlp_out), _output_site(mlp_out), [mlp_out])
            prev_ds, prev_stash = hp.get("hook_deepstack"), stash

    final = get_module(lm, adapter.final_norm)
    scale, normed = point(final, "hook_scale"), point(final, "hook_normalized")
    named["ln_final.hook_scale"], named["ln_final.hook_normalized"] = scale, normed
    if fresh:
        if prev_ds is not None and n_deepstack == len(layers):
            Site(final, _deepstack_into_norm(prev_ds, prev_stash), [prev_ds], pre=True)
        Site(final, _rms_site(final, adapter, scale, normed), [scale, normed])
    for name, hook_point in named.items():
        hook_point.name = name
    return named
