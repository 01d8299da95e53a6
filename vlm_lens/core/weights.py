"""The language model's weights in TransformerLens's layout, read from the HF modules on access.

TransformerLens's analysis code (`ActivationCache.decompose_resid`, `logit_attrs`,
`compute_head_results`, `get_neuron_results`, ...) reads weights off the model:
`model.W_U`, `model.b_U`, `model.blocks[L].attn.W_O`, `model.blocks[L].mlp.W_out`,
`model.ln_final`. These views give them from the HF modules, computed at each access (no
copy is kept, so they follow the HF weights; `W_U` is a vocabulary-sized copy).

Layouts (TransformerLens's)::

    W_U    [d_model, d_vocab]          final norm weight folded in (TL's fold_ln)
    W_O    [head, d_head, d_model]     attention output projection, split by head
    W_gate [d_model, d_mlp]            gated MLP: hook_pre = ln2(x) @ W_gate
    W_in   [d_model, d_mlp]            hook_pre_linear = ln2(x) @ W_in
    W_out  [d_mlp, d_model]            mlp_out = hook_post @ W_out (before Gemma3's post-norm)

Only the final norm's weight is folded (into `W_U`): the norms inside the layers keep their
weights, so there is no `W_Q`/`W_K`/`W_V` here (they would need ln1's weight and, on Qwen3,
the per-head q/k norms).

Not for: editing weights (write to `model.hf_model`), or anything a forward pass computes.
"""

from __future__ import annotations

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from vlm_lens.core.hook_points import VLMHookPoint


def _bias(linear: torch.nn.Linear, size: int) -> Float[Tensor, " size"]:
    w = linear.weight
    return (
        linear.bias
        if linear.bias is not None
        else torch.zeros(size, dtype=w.dtype, device=w.device)
    )


class AttentionWeights:
    """`model.blocks[L].attn`: the output projection of one attention module by head."""

    def __init__(self, o_proj: torch.nn.Linear, n_heads: int):
        self._o_proj, self._n_heads = o_proj, n_heads

    @property
    def W_O(self) -> Float[Tensor, "head d_head d_model"]:
        return rearrange(self._o_proj.weight, "m (h d) -> h d m", h=self._n_heads)

    @property
    def b_O(self) -> Float[Tensor, " d_model"]:
        return _bias(self._o_proj, self._o_proj.out_features)


class MLPWeights:
    """`model.blocks[L].mlp`: a gated MLP, down(act(gate(x)) * up(x))."""

    def __init__(self, gate: torch.nn.Linear, up: torch.nn.Linear, down: torch.nn.Linear):
        self._gate, self._up, self._down = gate, up, down

    @property
    def W_gate(self) -> Float[Tensor, "d_model d_mlp"]:
        return self._gate.weight.T

    @property
    def W_in(self) -> Float[Tensor, "d_model d_mlp"]:
        return self._up.weight.T

    @property
    def b_in(self) -> Float[Tensor, " d_mlp"]:
        return _bias(self._up, self._up.out_features)

    @property
    def W_out(self) -> Float[Tensor, "d_mlp d_model"]:
        return self._down.weight.T

    @property
    def b_out(self) -> Float[Tensor, " d_model"]:
        return _bias(self._down, self._down.out_features)


class BlockWeights:
    """`model.blocks[L]`: `attn` and `mlp` weight views of one decoder layer."""

    def __init__(self, attn: AttentionWeights, mlp: MLPWeights):
        self.attn, self.mlp = attn, mlp


class FinalNorm:
    """`model.ln_final`: the final RMSNorm without its weight (folded into `W_U`), as in
    TransformerLens's `RMSNormPre`; `hook_scale` / `hook_normalized` are its hook points."""

    def __init__(self, eps: float, hook_scale: VLMHookPoint, hook_normalized: VLMHookPoint):
        self.eps, self.hook_scale, self.hook_normalized = eps, hook_scale, hook_normalized

    def __call__(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def folded_unembed(
    lm_head: torch.nn.Linear, final_norm: torch.nn.Module, offset: float
) -> Float[Tensor, "d_model d_vocab"]:
    """`W_U`: the unembedding with the final norm's weight folded in, so that
    `ln_final.hook_normalized @ W_U + b_U` are the logits."""
    scale = offset + final_norm.weight.float()
    return (scale[:, None] * lm_head.weight.float().T).to(lm_head.weight.dtype)


def folded_rows(
    lm_head: torch.nn.Linear, final_norm: torch.nn.Module, offset: float, tokens: Tensor
) -> Float[Tensor, "... d_model"]:
    """Columns `tokens` of `W_U`, as rows (without building the whole `W_U`)."""
    scale = offset + final_norm.weight.float()
    rows = lm_head.weight[tokens.to(lm_head.weight.device)].float() * scale
    return rows.to(lm_head.weight.dtype)
