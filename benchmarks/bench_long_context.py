"""Long prompts: what does reading or editing one attention row cost, against HF's SDPA?

One prefill (a plain forward pass, no KV cache) of a Qwen3-VL whose prompt holds N images of
16 x 16 image tokens each (plus a short system prompt and question), for P ~ 1k .. 8k tokens.
The model is the zoo's tiny Qwen3-VL with a wider text model (4 layers, hidden 256, 8 query /
4 key-value heads of 32, MLP 512; random weights). Methods:

- ``hf_sdpa``: the HF model, ``attn_implementation="sdpa"`` (the reference of every ratio);
- ``hf_eager_attn``: HF eager attention with ``output_attentions=True`` (all layers' patterns);
- ``hooked``: `HookedVLM`, no hooks;
- ``record_last``: `HookedVLM` recording the answer row of the last layer
  (`AttentionRecorder(AttentionRecord(layers=[-1], steps=[0]))`, the counting study's recording);
- ``record_all``: the same on every layer;
- ``yesbias_q4``: `redistribute("system", "text", "Q4")` on the answer rows (the yes-bias edit);
- ``nnsight_row``: `model.to_nnsight()` reading the last layer's last pattern row.

Measurement. Each (method, P, round) runs in a fresh Python process, so no allocator state,
cache or page carries over between methods; rounds are interleaved (round r runs every
method at every P before round r+1) and the table shows medians, because the machine may be
shared. In the child, after loading the model and building the inputs, the kernel's peak-RSS
counter is reset (``/proc/self/clear_refs`` = 5) and the forward pass runs; its peak memory is
VmHWM minus the RSS before the pass: the memory the forward pass itself needs, which is what
grows with P (the process's total also holds the interpreter, torch and the weights, the
same for every method; it is reported as ``maxrss``). RSS, not a torch allocator counter:
CPU tensors have no allocator statistics in torch, and tracemalloc does not see them. The
children run with a fixed glibc mmap threshold (``MALLOC_ENV``) so that RSS follows the
live tensors rather than the allocator's history. The
time is the CPU time of the process during the fastest of ``--warm`` further passes in the
same process: with one torch thread it is the work done, much less disturbed by other jobs on
a shared machine than wall time (also kept, as ``wall_s``); the table shows medians over
rounds. The growth exponent is the
least-squares slope of log(value) on log(P) over the sizes run.

    python benchmarks/bench_long_context.py [--sizes 1024 2048 4096 8192] [--repeats 3]
        [--threads 1] [--eager-max 4096] [--json out.json] [--log runs.jsonl] [--smoke]
    python benchmarks/bench_long_context.py --summarise runs.jsonl

``--smoke``: P ~ 180 and 290 on a narrow model, one round, measured in-process (a fresh
process costs ~15 s of imports here; the test-suite runs it).

Not for: GPU memory (benchmarks/bench_gpu.py) or decoding steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path: put the repository's root
# before any installed vlm_lens (children inherit it through PYTHONPATH).
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# glibc raises its mmap threshold as blocks are freed, after which large tensors come from a
# heap that is not given back: the RSS then depends on what ran before. A fixed threshold
# maps every large tensor on its own and unmaps it when freed, so RSS follows live memory.
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "131072",
    "MALLOC_TRIM_THRESHOLD_": "131072",
    "MALLOC_ARENA_MAX": "2",
}
METHODS = (
    "hf_sdpa",
    "hf_eager_attn",
    "hooked",
    "record_last",
    "record_all",
    "yesbias_q4",
    "nnsight_row",
)
TOKENS_SIDE = 16  # image tokens per side: 16 x 16 = 256 tokens per image
TEXT = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 8}
SMOKE_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}
SYSTEM = "You are a careful assistant. Answer yes or no."
PROMPT = "Is there a red dot in any of the images? Answer: "


def build_checkpoint(directory: Path, smoke: bool) -> Path:
    from vlm_lens.zoo import tiny_checkpoint

    text = dict(SMOKE_TEXT if smoke else TEXT)
    text.update(num_key_value_heads=text["num_attention_heads"] // 2, max_position_embeddings=65536)
    side = 32 * (4 if smoke else TOKENS_SIDE)  # 16-px patches merged 2 x 2: 32 px per token
    return tiny_checkpoint(
        "qwen3_vl",
        directory,
        text_config=text,
        image_processor={"size": {"shortest_edge": 32 * 32, "longest_edge": side * side}},
    )


def images_for(n_tokens: int, smoke: bool) -> int:
    per_image = (4 if smoke else TOKENS_SIDE) ** 2 + 2  # + vision start / end
    return max(1, round((n_tokens - 40) / per_image))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> dict:
    """One method at one size, in this (fresh) process."""
    import numpy as np
    import torch
    import transformers
    from PIL import Image

    from vlm_lens import HookedVLM
    from vlm_lens.adapters import adapter_for
    from vlm_lens.core.prepare import prepare_inputs
    from vlm_lens.core.recording import AttentionRecord, AttentionRecorder
    from vlm_lens.interventions import redistribute

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    side = 32 * (4 if args.smoke else TOKENS_SIDE)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
        for _ in range(args.images)
    ]
    method = args.method
    path = args.ckpt
    config = transformers.AutoConfig.from_pretrained(path)
    adapter = adapter_for(config)
    if method.startswith("hf_"):
        impl = "sdpa" if method == "hf_sdpa" else "eager"
        model_cls = getattr(transformers, adapter.model_class)
        hf = model_cls.from_pretrained(path, attn_implementation=impl).eval()
        processor = transformers.AutoProcessor.from_pretrained(path)
        inputs = prepare_inputs(processor, adapter, hf.config, images, PROMPT, SYSTEM, True)
        extra = {"output_attentions": True} if method == "hf_eager_attn" else {}

        def run():
            return hf(**inputs.tensors, use_cache=False, **extra).logits

    else:
        model = HookedVLM.from_pretrained(path)
        inputs = model.prepare(images=images, prompt=PROMPT, system=SYSTEM)
        n_layers = model.cfg.n_layers
        if method == "hooked":

            def run():
                return model(inputs)

        elif method in ("record_last", "record_all"):
            layers = [-1] if method == "record_last" else "all"

            def run():
                recorder = AttentionRecorder(AttentionRecord(layers=layers, steps=[0]), n_layers)
                logits = model.run_with_hooks(inputs, fwd_hooks=recorder.fwd_hooks())
                assert recorder.recording.steps == [0]
                return logits

        elif method == "yesbias_q4":
            iv = redistribute("system", "text", "Q4", model=model)

            def run():
                return model.run_with_hooks(inputs, fwd_hooks=iv)

        elif method == "nnsight_row":
            name = f"blocks.{n_layers - 1}.attn.hook_pattern"
            nn = model.to_nnsight(names=lambda n: n == name)

            def run():
                with nn.trace(inputs):
                    row = nn.hook(name).output[:, :, -1].save()
                assert row.shape[-1] == inputs.input_ids.shape[1]
                return row

        else:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    n_tokens = int(inputs.tensors["input_ids"].shape[1])
    with torch.no_grad():
        import gc

        gc.collect()
        reset = _reset_peak()
        before = _status_kb("VmRSS")
        t0 = time.perf_counter()
        run()
        cold = time.perf_counter() - t0
        peak = _status_kb("VmHWM") if reset else None
        warm, cpu = [], []
        for _ in range(args.warm):
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            warm.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    import resource

    return {
        "method": method,
        "tokens": n_tokens,
        "images": args.images,
        "wall_s": min(warm),  # the least disturbed of the warm passes (a shared machine)
        "time_s": min(cpu),
        "cold_time_s": cold,
        "peak_mb": None if peak is None else (peak - before) / 1024,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y on log x (None with fewer than two points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den


def summarise(runs: list[dict], methods: list[str]) -> dict:
    """Medians per (method, P), ratios to hf_sdpa, and growth exponents per method."""
    cells: dict[tuple[str, int], dict] = {}
    for r in runs:
        cell = cells.setdefault(
            (r["method"], r["images"]), {"tokens": r["tokens"], "t": [], "m": []}
        )
        cell["t"].append(r["time_s"])
        if r["peak_mb"] is not None:
            cell["m"].append(r["peak_mb"])
    table = []
    for (method, images), c in sorted(
        cells.items(), key=lambda kv: (kv[0][1], methods.index(kv[0][0]))
    ):
        base = cells.get(("hf_sdpa", images))
        t = statistics.median(c["t"])
        m = statistics.median(c["m"]) if c["m"] else None
        bt = statistics.median(base["t"]) if base else None
        bm = statistics.median(base["m"]) if base and base["m"] else None
        table.append(
            {
                "method": method,
                "tokens": c["tokens"],
                "images": images,
                "rounds": len(c["t"]),
                "time_s": t,
                "peak_mb": m,
                "time_ratio": t / bt if bt else None,
                "mem_ratio": m / bm if (m is not None and bm) else None,
            }
        )
    growth = {}
    for method in methods:
        rows = [r for r in table if r["method"] == method]
        xs = [r["tokens"] for r in rows]
        growth[method] = {
            "time": slope(xs, [r["time_s"] for r in rows]),
            "memory": slope(xs, [r["peak_mb"] for r in rows]),
        }
    return {"table": table, "growth": growth}


def markdown(summary: dict) -> str:
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = [
        "| P | method | CPU time (s) | x SDPA | peak (MiB) | x SDPA |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in summary["table"]:
        lines.append(
            f"| {r['tokens']} | {r['method']} | {f(r['time_s'], '.3f')} | "
            f"{f(r['time_ratio'], '.2f')} | {f(r['peak_mb'], '.0f')} | {f(r['mem_ratio'], '.2f')} |"
        )
    lines += ["", "| method | time exponent | memory exponent |", "|---|---:|---:|"]
    for method, g in summary["growth"].items():
        lines.append(f"| {method} | {f(g['time'], '.2f')} | {f(g['memory'], '.2f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warm", type=int, default=1, help="warm passes timed per process (min kept)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument(
        "--eager-max",
        type=int,
        default=4096,
        help="largest P for hf_eager_attn (it keeps 4 x [8, P, P] float32: 8.6 GB at 8k)",
    )
    p.add_argument(
        "--dir", default=None, help="where the checkpoint is built (default: a temp dir)"
    )
    p.add_argument("--json", default=None)
    p.add_argument("--log", default=None, help="append each measurement to this JSON-lines file")
    p.add_argument("--smoke", action="store_true")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="measure in this process, not a fresh one per measurement (implied by --smoke; "
        "memory numbers then carry allocator state over between methods)",
    )
    # internal: one measurement in a fresh process
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", default=None, help=argparse.SUPPRESS)
    p.add_argument("--images", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--summarise", default=None, help="print the table of a --log file (e.g. a partial run)"
    )
    args = p.parse_args(argv)
    if args.summarise:
        runs = [json.loads(line) for line in Path(args.summarise).read_text().splitlines() if line]
        methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
        summary = summarise(runs, methods)
        print(markdown(summary))
        return summary
    if args.child:
        print(json.dumps(child(args)))
        return {}
    if args.smoke:
        args.sizes, args.repeats, args.in_process, args.warm = [100, 200], 1, True, 1
    if args.repeats < 1 or any(s < 50 for s in args.sizes):
        p.error("--repeats must be >= 1 and every size >= 50 tokens")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoint(Path(args.dir or tmp), args.smoke)
        runs = []
        for rnd in range(args.repeats):
            for size in args.sizes:
                n_images = images_for(size, args.smoke)
                for method in args.methods:
                    if method == "hf_eager_attn" and size > args.eager_max:
                        continue
                    if args.in_process:
                        one = argparse.Namespace(**vars(args))
                        one.method, one.images, one.ckpt = method, n_images, str(ckpt)
                        runs.append(dict(child(one), round=rnd))
                        continue
                    cmd = [sys.executable, str(Path(__file__).resolve()), "--child"]
                    cmd += ["--method", method, "--images", str(n_images), "--ckpt", str(ckpt)]
                    cmd += ["--threads", str(args.threads), "--warm", str(args.warm)]
                    cmd += ["--smoke"] if args.smoke else []
                    pythonpath = os.pathsep.join(
                        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
                    )
                    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=pythonpath)
                    env.update(MALLOC_ENV)
                    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    if out.returncode != 0:
                        raise RuntimeError(f"{method} at P~{size} failed:\n{out.stderr[-3000:]}")
                    run = json.loads(out.stdout.strip().splitlines()[-1])
                    run["round"] = rnd
                    runs.append(run)
                    if args.log:
                        with open(args.log, "a") as log:
                            log.write(json.dumps(run) + "\n")
                    print(
                        f"round {rnd} P={run['tokens']} {method}: cpu {run['time_s']:.3f}s "
                        f"peak {run['peak_mb']} MiB",
                        file=sys.stderr,
                        flush=True,
                    )
    import torch
    import transformers

    summary = summarise(runs, args.methods)
    report = {
        "machine": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cpus": os.cpu_count(),
            "threads": args.threads,
        },
        "runs": runs,
        **summary,
    }
    print(markdown(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
