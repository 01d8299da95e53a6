"""What does it cost to watch attention while a VLM generates?

One run, one model, one prompt with one image, greedy decoding of a fixed number of new
tokens (EOS suppressed, so every method does the same work), timed as the median of a few
repeats after a warm-up, the methods interleaved round by round so that load on the
machine spreads over all of them:

- ``hf_sdpa``: plain ``transformers`` generate (SDPA attention): the baseline;
- ``hf_eager_output_attentions``: ``attn_implementation="eager"`` + ``output_attentions=True``,
  HF's way to see attention (keeps every layer's full pattern at every step);
- ``vlm_lens_no_hooks``: ``HookedVLM.generate`` with nothing attached;
- ``vlm_lens_record_last_layer``: ``HookedVLM.generate`` recording the last layer's image
  attention of the predicting row at every step (``AttentionRecord(layers=-1, keep=("image",))``);
- ``vlm_lens_edit_{pattern,resid_post}_{checked,unchecked}``: ``HookedVLM.generate`` with a
  hook on every layer's ``attn.hook_pattern`` (or ``hook_resid_post``) returning a new tensor
  (``t * 1.0``), with the check of hook returns on and off (``VLMHookPoint.check_returns``):
  what that check costs an editing run;
- ``vlm_lens_no_hooks_nnsight_instrumented``: the same, on a model wrapped by ``to_nnsight()``
  (nnsight instruments every module in place);
- ``nnsight_record_last_layer``: the same recording through nnsight (``model.to_nnsight()``,
  ``tracer.iter[:n]``, last layer's ``hook_pattern``);
- ``tl_bridge_*``: TransformerLens's ``TransformerBridge`` booted on the same checkpoint:
  its ``hf_generate`` with no hooks, and with a ``blocks.-1.attn.hook_pattern`` hook keeping
  the same slice. (Its own ``generate`` loop is tried once and its outcome reported.)

Printed: wall-clock seconds (median, min) and their ratios to ``hf_sdpa``'s; the process's CPU
seconds (median) and their ratio (with one torch thread, CPU time is the work done, and it
is far less disturbed than wall time by other jobs on a shared machine); the bytes of
attention each method keeps (and their share of what ``output_attentions`` keeps); whether it
generated the same tokens as ``hf_sdpa``.

Default config: Qwen3-VL with real-model proportions scaled to CPU (text 12 layers x 512,
8 heads / 4 KV heads of 64, MLP 1536; vision 12 layers x 256, patch 16, merge 2; ~54M
parameters), one 448x448 image (14 x 14 = 196 image tokens), 8 new tokens.
``--tiny``: the zoo's default tiny Qwen3-VL, a 64x64 image, 2 new tokens, 1 repeat (seconds;
for the test-suite).

    python benchmarks/bench_overhead.py [--tiny] [--repeats 7] [--threads 1] [--json out.json]
        [--only vlm_lens_no_hooks vlm_lens_edit]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402

from vlm_lens import HookedVLM, zoo  # noqa: E402
from vlm_lens.core.generation import AttentionRecord, generation_config  # noqa: E402
from vlm_lens.core.hook_points import VLMHookPoint  # noqa: E402
from vlm_lens.reports.machine import machine_info

PROMPT = "How many dots are there in the image? Answer directly. Answer: "

REAL_PROPORTIONS: dict[str, Any] = {
    # Qwen3-VL-2B: text 28 x 2048 (16 heads / 8 KV of 128, MLP 6144), vision 24 x 1024
    # (patch 16, merge 2). Scaled down, keeping the shape of the model: GQA 2:1, head_dim 64,
    # MLP 3x, vision half the text width, deepstack on early vision layers.
    "text_config": {
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 64,
    },
    "vision_config": {"depth": 12, "hidden_size": 256, "intermediate_size": 1024, "num_heads": 4},
    # exactly one 448 x 448 image -> 28 x 28 patches -> 14 x 14 merged tokens
    "image_processor": {"size": {"shortest_edge": 448 * 448, "longest_edge": 448 * 448}},
}


@dataclass
class Method:
    name: str
    run: Callable[[], tuple[torch.Tensor, int]]  # -> (generated tokens [batch, new], bytes kept)
    times: list[float] = field(default_factory=list)  # wall clock, seconds
    cpu_times: list[float] = field(default_factory=list)  # this process's CPU time, seconds
    nbytes: int = 0
    tokens: torch.Tensor | None = None
    error: str | None = None


def dots_image(size: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.full((size, size), 255, dtype=np.uint8)
    r = max(2, size // 40)
    for _ in range(12):
        y, x = rng.integers(r, size - r, size=2)
        arr[y - r : y + r, x - r : x + r] = 0
    return Image.fromarray(arr).convert("RGB")


def tensor_bytes(tensors: Any) -> int:
    if isinstance(tensors, torch.Tensor):
        return tensors.numel() * tensors.element_size()
    if isinstance(tensors, (list, tuple)):
        return sum(tensor_bytes(t) for t in tensors)
    return 0


def build_methods(path: Path, image_size: int, n_new: int) -> tuple[list[Method], dict]:
    model = HookedVLM.from_pretrained(path)
    inputs = model.prepare(images=[dots_image(image_size)], prompt=PROMPT)
    tensors = inputs.tensors
    last = model.cfg.n_layers - 1
    image = inputs.segments.samples[0].images[0]
    lo, hi = image.start, image.end
    config = generation_config(model, n_new, keep_logits=False, min_new_tokens=n_new)
    model_cls = getattr(transformers, model.adapter.model_class)
    info = {
        "parameters": sum(p.numel() for p in model.hf_model.parameters()),
        "prompt_tokens": int(inputs.input_ids.shape[1]),
        "image_tokens": len(image),
        "image_grid": image.grid,
        "new_tokens": n_new,
        "notes": [],
    }
    methods: list[Method] = []

    hf = model_cls.from_pretrained(path).eval()  # sdpa is transformers' default

    def hf_sdpa():
        with torch.no_grad():
            out = hf.generate(**tensors, generation_config=config)
        return out.sequences[:, -n_new:], 0

    methods.append(Method("hf_sdpa", hf_sdpa))

    eager = model_cls.from_pretrained(path, attn_implementation="eager").eval()
    eager_config = generation_config(
        model, n_new, keep_logits=False, min_new_tokens=n_new, output_attentions=True
    )

    def hf_eager():
        with torch.no_grad():
            out = eager.generate(**tensors, generation_config=eager_config)
        return out.sequences[:, -n_new:], tensor_bytes(out.attentions)

    methods.append(Method("hf_eager_output_attentions", hf_eager))

    def ours_plain():
        out = model.generate(inputs, n_new, keep_logits=False, min_new_tokens=n_new)
        return out.tokens, 0

    methods.append(Method("vlm_lens_no_hooks", ours_plain))

    record = AttentionRecord(layers=-1, keep=("image",))

    def ours_record():
        out = model.generate(inputs, n_new, record=record, keep_logits=False, min_new_tokens=n_new)
        return out.tokens, out.recording.nbytes()

    methods.append(Method("vlm_lens_record_last_layer", ours_record))

    def same(tensor, hook):  # a new tensor, equal to the input: the cost is the check's alone
        return tensor * 1.0

    for point, label in (("attn.hook_pattern", "pattern"), ("hook_resid_post", "resid_post")):
        edits = [(f"blocks.{i}.{point}", same) for i in range(model.cfg.n_layers)]
        for checked in (True, False):

            def ours_edit(edits=edits, checked=checked):
                VLMHookPoint.check_returns = checked
                try:
                    with model.hooks(fwd_hooks=edits):
                        out = model.generate(inputs, n_new, keep_logits=False, min_new_tokens=n_new)
                finally:
                    VLMHookPoint.check_returns = True
                return out.tokens, 0

            name = f"vlm_lens_edit_{label}_{'checked' if checked else 'unchecked'}"
            methods.append(Method(name, ours_edit))

    # nnsight instruments modules in place: give it its own instance.
    try:
        import nnsight

        wrapped = HookedVLM.from_pretrained(path)
        pattern_name = f"blocks.{last}.attn.hook_pattern"
        nn = wrapped.to_nnsight(names=lambda name: name == pattern_name)

        def nn_plain():
            out = wrapped.generate(inputs, n_new, keep_logits=False, min_new_tokens=n_new)
            return out.tokens, 0

        def nn_record():
            with nn.generate(inputs, n_new, keep_logits=False, min_new_tokens=n_new) as tracer:
                kept = nnsight.save([])
                for _ in tracer.iter[:n_new]:
                    pattern = nn.model.language_model.layers[last].self_attn.hook_pattern.output
                    kept.append(pattern[:, :, -1, lo:hi].detach().to("cpu", copy=True))
                result = tracer.result.save()
            return result.tokens, tensor_bytes(list(kept))

        methods.append(Method("vlm_lens_no_hooks_nnsight_instrumented", nn_plain))
        methods.append(Method("nnsight_record_last_layer", nn_record))
    except Exception as error:  # pragma: no cover - depends on the installed nnsight
        info["notes"].append(f"nnsight: not run ({type(error).__name__}: {error})")

    try:
        from transformer_lens.model_bridge import TransformerBridge

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bridge = TransformerBridge.boot_transformers(str(path), device="cpu")
        multimodal = {k: v for k, v in tensors.items() if k not in ("input_ids", "attention_mask")}
        common = dict(
            max_new_tokens=n_new,
            do_sample=False,
            attention_mask=inputs.attention_mask,
            return_type="tokens",
            **multimodal,
        )

        def bridge_plain():
            out = bridge.hf_generate(inputs.input_ids, min_new_tokens=n_new, **common)
            return out[:, -n_new:], 0

        def bridge_record():
            kept: list[torch.Tensor] = []

            def keep(pattern, hook):
                kept.append(pattern[:, :, -1, lo:hi].detach().to("cpu", copy=True))

            with bridge.hooks(fwd_hooks=[(f"blocks.{last}.attn.hook_pattern", keep)]):
                out = bridge.hf_generate(inputs.input_ids, min_new_tokens=n_new, **common)
            return out[:, -n_new:], tensor_bytes(kept)

        methods.append(Method("tl_bridge_hf_generate_no_hooks", bridge_plain))
        methods.append(Method("tl_bridge_hf_generate_record_last_layer", bridge_record))
        info["notes"].extend(_bridge_own_loop(bridge, inputs, common, n_new, hf_sdpa()[0]))
    except Exception as error:
        info["notes"].append(
            f"TransformerBridge: not run ({type(error).__name__}: {str(error)[:300]})"
        )
    return methods, info


def _bridge_own_loop(bridge, inputs, common, n_new, reference) -> list[str]:
    """TransformerBridge.generate (its own TransformerLens-style loop): does it run, is it right?"""
    notes = []
    kwargs = {k: v for k, v in common.items() if k != "max_new_tokens"}
    for cache in (True, False):
        label = f"TransformerBridge.generate(use_past_kv_cache={cache})"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = bridge.generate(
                    inputs.input_ids,
                    max_new_tokens=n_new,
                    use_past_kv_cache=cache,
                    stop_at_eos=False,
                    verbose=False,
                    **kwargs,
                )
            same = torch.equal(out[:, -n_new:].cpu(), reference.cpu())
            notes.append(
                f"{label}: runs; tokens {'equal' if same else 'DIFFER from'} HF's greedy tokens"
            )
        except Exception as error:
            first = str(error).strip().splitlines()[0][:200]
            notes.append(f"{label}: fails ({type(error).__name__}: {first})")
    return notes


def run(methods: list[Method], repeats: int) -> None:
    for m in methods:  # warm-up (and the tokens / bytes each keeps)
        try:
            tokens, m.nbytes = m.run()
            m.tokens = tokens.cpu()
        except Exception as error:
            m.error = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
            traceback.print_exc(file=sys.stderr)
    live = [m for m in methods if m.error is None]
    for r in range(repeats):
        # rotate the order each round: slow drifts in load hit every method alike
        for m in live[r % len(live) :] + live[: r % len(live)]:
            start, cpu_start = time.perf_counter(), time.process_time()
            m.run()
            m.times.append(time.perf_counter() - start)
            m.cpu_times.append(time.process_time() - cpu_start)


def report(methods: list[Method], info: dict, env: dict) -> dict:
    base = next(m for m in methods if m.name == "hf_sdpa")
    base_median, base_min = statistics.median(base.times), min(base.times)
    base_cpu = statistics.median(base.cpu_times)
    ref_bytes = next(
        (m.nbytes for m in methods if m.name == "hf_eager_output_attentions" and not m.error), 0
    )
    print(
        f"machine: {env['cpu']}, {env['logical_cpus']} logical CPUs, RAM {env['ram']}, "
        f"torch threads {env['torch_threads']}, load average {env['load_average']}"
    )
    print(f"python {env['python']}, torch {env['torch']}, transformers {env['transformers']}")
    print(
        f"model: Qwen3-VL, {info['parameters'] / 1e6:.1f}M parameters; prompt {info['prompt_tokens']} "
        f"tokens of which {info['image_tokens']} image tokens (grid {info['image_grid']}); "
        f"{info['new_tokens']} new tokens; {len(base.times)} timed repeats"
    )
    header = (
        f"{'method':42s} {'wall s':>7s} {'ratio':>6s} {'min s':>7s} {'ratio':>6s} "
        f"{'cpu s':>7s} {'ratio':>6s} "
        f"{'bytes kept':>11s} {'% of OA':>8s}  same tokens"
    )
    print(header)
    print("-" * len(header))
    rows = {}
    for m in methods:
        if m.error:
            print(f"{m.name:42s} not run: {m.error}")
            rows[m.name] = {"error": m.error}
            continue
        median, cpu = statistics.median(m.times), statistics.median(m.cpu_times)
        ratio, cpu_ratio = median / base_median, cpu / base_cpu
        share = 100 * m.nbytes / ref_bytes if ref_bytes else float("nan")
        same = bool(torch.equal(m.tokens, base.tokens))
        print(
            f"{m.name:42s} {median:7.3f} {ratio:5.2f}x {min(m.times):7.3f} "
            f"{min(m.times) / base_min:5.2f}x {cpu:7.3f} "
            f"{cpu_ratio:5.2f}x {m.nbytes:11,d} {share:7.2f}%  {'yes' if same else 'NO'}"
        )
        rows[m.name] = {
            "median_s": median,
            "min_s": min(m.times),
            "times_s": m.times,
            "ratio_to_hf_sdpa": ratio,
            "min_ratio_to_hf_sdpa": min(m.times) / base_min,
            "cpu_median_s": cpu,
            "cpu_times_s": m.cpu_times,
            "cpu_ratio_to_hf_sdpa": cpu_ratio,
            "bytes_kept": m.nbytes,
            "percent_of_output_attentions_bytes": share,
            "same_tokens_as_hf_sdpa": same,
        }
    for note in info["notes"]:
        print("note:", note)
    return {"machine": env, "setup": info, "results": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model, seconds (for tests)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed repeats (default 7; tiny 1)"
    )
    parser.add_argument("--new-tokens", type=int, default=None, help="default 8; tiny 2")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 is steadier on a shared machine)",
    )
    parser.add_argument("--checkpoints", default=None, help="where to build the checkpoint")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="PREFIX",
        help="time only the methods whose names start with these (hf_sdpa is always timed)",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    repeats = args.repeats if args.repeats is not None else (1 if args.tiny else 7)
    n_new = args.new_tokens if args.new_tokens is not None else (2 if args.tiny else 8)
    directory = args.checkpoints or os.path.join(tempfile.gettempdir(), "vlm_lens_bench")
    if args.tiny:
        path, image_size = zoo.tiny_checkpoint("qwen3_vl", directory), 64
    else:
        path, image_size = zoo.tiny_checkpoint("qwen3_vl", directory, **REAL_PROPORTIONS), 448

    methods, info = build_methods(Path(path), image_size, n_new)
    if args.only:
        methods = [m for m in methods if m.name == "hf_sdpa" or m.name.startswith(tuple(args.only))]
    run(methods, repeats)
    result = report(methods, info, machine_info())
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
