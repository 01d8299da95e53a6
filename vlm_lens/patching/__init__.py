"""Activation patching for VLMs: layers x heads x image patches x decoding steps.

Run a clean and a corrupted input (e.g. the same prompt on two images of the same size
that differ by one dot), copy activations from the clean run into the corrupted run at
chosen places, and measure how much of the clean behaviour comes back::

    from vlm_lens.patching import counting_pair, patch_sweep
    from vlm_lens.data.dots import counterfactual_pairs

    pair = counting_pair(model, counterfactual_pairs(1, seed=0)[0])
    res = patch_sweep(model, pair.clean, pair.corrupted, "resid_pre",
                      answer=pair.first_step, positions="image_patch")
    res.values          # [layer, position] normalised: 0 = corrupted, 1 = clean
    res.heatmap()       # one map over the image's token grid per layer
    res.to_rows()       # a tidy table, one dict per cell
    res.n_forward_passes

Hook families: "resid_pre" / "resid_post" (per position group), "z" (`hook_z`, per head)
and "pattern" (`hook_pattern`, per head; positions select query rows). Position groups:
"each", "segment" (system / image / text / generated), "image_patch" (drawn over the
image), "all", "last", or your own (see `vlm_lens.patching.positions`).

Decoding steps (teacher forcing). A count such as "16" is two decoding steps. To patch at
step k, the answer's first k tokens (`AnswerStep.prefix`) are appended to *both* inputs,
so both runs have the same layout and their last position is the one that predicts answer
token k; the clean run's activations of that forward are patched into the corrupted run's.
This is the same computation as step k of KV-cached generation: with a causal mask, the
keys, values and residual stream at every position depend only on the tokens up to it, so
one forward pass over prompt + prefix computes, at each position, exactly the activations
that generation computed when it fed that token (the cache just stores the earlier ones),
and the last row's logits are step k's logits (tested against `model.generate`, given that
generation fed the same prefix). Patching the last position at step k therefore patches
what the k-th decoding step computes; patching earlier positions patches what earlier steps
left in the cache. A list of `AnswerStep`s (e.g. `CountingPair.steps`) gives one result
with a "step" axis.

Efficiency: the clean run is cached once per step (only the hook points the sweep patches),
the corrupted run is run once in full (the baseline), and patched runs are batched (each row
patches a different cell, `batch_size` cells per pass). A patched batch starts at the first
layer it patches, from the corrupted run's residual stream there: below that layer every row
equals the corrupted run, so the vision tower, the embeddings and those layers are not run
again and no pixel tensor is copied; with causal attention, the positions before the first
one the batch patches are not run either (their keys and values come from the corrupted run).
See `vlm_lens.patching.resume`: recording checks that this is exact, and a batch where it is
not runs from the inputs; `resume=False` runs every batch from the inputs.
`PatchingResult.n_forward_passes` reports the passes and `PatchingResult.n_layer_tokens`
their cost (decoder layers run x batch rows x query positions).

Architecture note: Qwen3-VL adds visual features ("deepstack") to the residual stream of the
image positions after each of its first few language layers (as many as
`vision_config.deepstack_visual_indexes`). Those additions come from the corrupted image in
a patched run, so patching the whole residual stream before layer 0 does not fully restore
the clean run on Qwen3-VL; patching it before the first layer after them does. Other
architectures read the image once, at the input embeddings.

Not for: batches of pairs in one call (sweep pairs one by one and aggregate the results),
path patching, attribution patching.
"""

from vlm_lens.patching.counting import COUNT_PROMPT, CountingPair, answer_tokens, counting_pair
from vlm_lens.patching.inputs import (
    check_same_layout,
    layout_difference,
    repeat_inputs,
    with_answer_prefix,
)
from vlm_lens.patching.positions import GROUPINGS, PositionGroup, position_groups
from vlm_lens.patching.result import PatchingResult
from vlm_lens.patching.sweep import (
    FAMILIES,
    AnswerStep,
    HookFamily,
    Metric,
    Patch,
    PatchedRun,
    answer_steps,
    get_act_patch_attn_head_out,
    get_act_patch_attn_head_pattern,
    get_act_patch_resid_post,
    get_act_patch_resid_pre,
    get_family,
    logit_diff,
    logprob_clean,
    patch_sweep,
    run_patched,
)

__all__ = [
    "COUNT_PROMPT",
    "FAMILIES",
    "GROUPINGS",
    "AnswerStep",
    "CountingPair",
    "HookFamily",
    "Metric",
    "Patch",
    "PatchedRun",
    "PatchingResult",
    "PositionGroup",
    "answer_steps",
    "answer_tokens",
    "check_same_layout",
    "counting_pair",
    "get_act_patch_attn_head_out",
    "get_act_patch_attn_head_pattern",
    "get_act_patch_resid_post",
    "get_act_patch_resid_pre",
    "get_family",
    "layout_difference",
    "logit_diff",
    "logprob_clean",
    "patch_sweep",
    "position_groups",
    "repeat_inputs",
    "run_patched",
    "with_answer_prefix",
]
