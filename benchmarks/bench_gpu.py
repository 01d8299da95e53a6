"""Long prompts on a GPU at real model size: reading or editing one attention row vs HF's kernels.

The models are built with the real dimensions of Qwen3-VL-2B-Instruct and LLaVA-1.5-7B and
random weights in bf16, directly on the GPU (no download: the values are written below). The
tokenizer and processor are the zoo's character-level ones with the real image geometry
(Qwen3-VL: 16-px patches merged 2 x 2, 512 x 512 images = 256 tokens each; LLaVA: CLIP
ViT-L/14 at 336 px, 576 tokens per image), so P is set by the number of images.

Methods (one prefill each, logits of the last position only, `torch.no_grad`):
``hf_sdpa`` (the reference), ``hf_flash`` (``flash_attention_2``, when the flash-attn
package is installed), ``hf_eager_attn`` (eager + ``output_attentions``; up to
``--eager-max`` tokens: it keeps every layer's ``[head, P, P]``), ``hooked`` (`HookedVLM`, no
hooks), ``record_last`` / ``record_all`` (the counting study's recording of the answer row,
last layer / every layer), ``yesbias_q4`` (`redistribute("system", "text", "Q4")`) and
``nnsight_row`` (`model.to_nnsight()` reading the last layer's last pattern row; nnsight
forces the hook point, so that layer takes the full explicit path).

Memory: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus the memory
allocated before the pass (the weights): the caching allocator's exact peak, so one process
serves every method. Time: CUDA-synchronised wall time, median of `--repeats` interleaved
rounds after one warm-up pass per method and size.

Real dimensions (config.json of each hub checkpoint):
- Qwen/Qwen3-VL-2B-Instruct: text 28 layers, hidden 2048, MLP 6144, 16 query / 8 key-value
  heads of 128, vocab 151936, tied embeddings, interleaved M-RoPE [24, 20, 20], rope theta
  5e6; vision 24 layers, hidden 1024, MLP 4096, 16 heads, patch 16, merge 2, temporal patch 2,
  2304 position embeddings, deepstack layers [5, 11, 17], output width 2048.
- llava-hf/llava-1.5-7b-hf: text (Vicuna-7B, Llama-2) 32 layers, hidden 4096, MLP 11008, 32
  heads of 128 (no GQA), vocab 32064, RMS eps 1e-5; vision CLIP ViT-L/14-336: 24 layers,
  hidden 1024, MLP 4096, 16 heads, patch 14, image 336, projection 768; features from layer -2.
They were written from the published configs, not downloaded here; the Qwen3-VL vision values
were cross-checked against an independent reimplementation's config.

    python benchmarks/bench_gpu.py [--arch qwen3_vl llava] [--sizes 1024 2048 4096 8192]
        [--repeats 3] [--eager-max 2048] [--json out.json]
    python benchmarks/bench_gpu.py --smoke     # CPU, tiny width (the test-suite runs it)

Not for: CPU memory across processes (benchmarks/bench_long_context.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402

from vlm_lens import HookedVLM  # noqa: E402
from vlm_lens.core.recording import AttentionRecord, AttentionRecorder  # noqa: E402
from vlm_lens.interventions import redistribute  # noqa: E402
from vlm_lens.zoo.tiny import config_and_processor, model_class  # noqa: E402

SYSTEM = "You are a careful assistant. Answer yes or no."
PROMPT = "Is there a red dot in any of the images? Answer: "

REAL = {
    "qwen3_vl": {
        "text_config": {
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "vocab_size": 151936,
            "max_position_embeddings": 262144,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
        },
        "vision_config": {
            "depth": 24,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_heads": 16,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [5, 11, 17],
            "out_hidden_size": 2048,
        },
        "tie_word_embeddings": True,
        "image_processor": {"size": {"shortest_edge": 64 * 64, "longest_edge": 512 * 512}},
    },
    "llava": {
        "text_config": {
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": 32064,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
        },
        "vision_config": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "patch_size": 14,
            "image_size": 336,
            "projection_dim": 768,
        },
        "vision_feature_layer": -2,
    },
}
# Pixels per side of one benchmark image, and image tokens (+ markers) it becomes.
IMAGE = {"qwen3_vl": (512, 256 + 2), "llava": (336, 576)}
SMOKE_IMAGE = {"qwen3_vl": (64, 4 + 2), "llava": (64, 16)}


def build(arch: str, smoke: bool, device: str, dtype: torch.dtype) -> HookedVLM:
    overrides = {} if smoke else REAL[arch]
    config, processor = config_and_processor(arch, **json.loads(json.dumps(overrides)))
    config.dtype = dtype
    cls = getattr(transformers, model_class(arch))
    with torch.device(device):
        hf = cls._from_config(config, dtype=dtype).eval()
    return HookedVLM(hf, processor)


def _flash_available() -> bool:
    try:
        from transformers.utils import is_flash_attn_2_available
    except ImportError:  # pragma: no cover - depends on the transformers release
        return False
    return bool(is_flash_attn_2_available())


def methods_for(model: HookedVLM, inputs, lm: torch.nn.Module) -> dict[str, Callable[[], object]]:
    """Each method as a no-argument callable running one prefill."""
    n_layers = model.cfg.n_layers
    last = f"blocks.{n_layers - 1}.attn.hook_pattern"

    def hf(impl: str, **extra):
        def run():
            lm.set_attn_implementation(impl)
            try:
                with model.running(inputs) as kwargs:
                    out = model.hf_model(**kwargs, use_cache=False, logits_to_keep=1, **extra)
                if extra:
                    assert out.attentions[-1].shape[-1] == inputs.input_ids.shape[1]
                return out
            finally:
                lm.set_attn_implementation("vlm_lens")

        return run

    def recorded(layers):
        def run():
            recorder = AttentionRecorder(AttentionRecord(layers=layers, steps=[0]), n_layers)
            model.run_with_hooks(inputs, fwd_hooks=recorder.fwd_hooks(), logits_to_keep=1)
            assert recorder.recording.steps == [0]

        return run

    iv = redistribute("system", "text", "Q4", model=model)
    nn = model.to_nnsight(names=lambda n: n == last)

    def nnsight_row():
        # Forced as nn.trace forces it; logits of the last position only, as for the others.
        model.force_hooks(True, lambda n: n == last)
        try:
            with nn.trace(inputs, fn=lambda x: model(x, return_type="output", logits_to_keep=1)):
                row = nn.hook(last).output[:, :, -1].save()
        finally:
            model.force_hooks(False)
        assert row.shape[-1] == inputs.input_ids.shape[1]

    runs = {
        "hf_sdpa": hf("sdpa"),
        "hf_eager_attn": hf("eager", output_attentions=True),
        "hooked": lambda: model(inputs, logits_to_keep=1),
        "record_last": recorded([-1]),
        "record_all": recorded("all"),
        "yesbias_q4": lambda: model.run_with_hooks(inputs, fwd_hooks=iv, logits_to_keep=1),
        "nnsight_row": nnsight_row,
    }
    if _flash_available() and model.dtype in (torch.float16, torch.bfloat16):
        runs["hf_flash"] = hf("flash_attention_2")
    return runs


def measure(fn: Callable[[], object], device: torch.device) -> tuple[float, float | None]:
    """(seconds, peak MiB above what was allocated before) of one call."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20 if cuda else None
    return seconds, peak


def run_arch(arch: str, args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    dtype = torch.float32 if args.smoke else torch.bfloat16
    model = build(arch, args.smoke, args.device, dtype)
    from vlm_lens.adapters import get_module

    lm = get_module(model.hf_model, model.adapter.language_model)
    side, per_image = (SMOKE_IMAGE if args.smoke else IMAGE)[arch]
    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        n_images = max(1, round((size - 40) / per_image))
        images = [
            Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
            for _ in range(n_images)
        ]
        inputs = model.prepare(images=images, prompt=PROMPT, system=SYSTEM)
        n_tokens = int(inputs.input_ids.shape[1])
        methods = methods_for(model, inputs, lm)
        if n_tokens > args.eager_max:
            methods.pop("hf_eager_attn")
        samples: dict[str, list[tuple[float, float | None]]] = {m: [] for m in methods}
        with torch.no_grad():
            for fn in methods.values():
                fn()  # warm-up (kernels, allocator)
            for _ in range(args.repeats):
                for name, fn in methods.items():
                    samples[name].append(measure(fn, device))
        base_t = statistics.median(t for t, _ in samples["hf_sdpa"])
        base_m = samples["hf_sdpa"][0][1]
        for name, got in samples.items():
            t = statistics.median(s for s, _ in got)
            m = statistics.median(p for _, p in got) if got[0][1] is not None else None
            rows.append(
                {
                    "arch": arch,
                    "tokens": n_tokens,
                    "method": name,
                    "time_s": t,
                    "peak_mib": m,
                    "time_ratio": t / base_t,
                    "mem_ratio": None if (m is None or not base_m) else m / base_m,
                }
            )
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", nargs="+", default=["qwen3_vl", "llava"], choices=sorted(REAL))
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--eager-max", type=int, default=2048)
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", default=None)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny width, P ~ 100, one repeat")
    args = p.parse_args(argv)
    if args.smoke:
        args.device, args.sizes, args.repeats = "cpu", [100], 1
    elif args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("no CUDA device: run on a GPU machine, or --smoke for the CPU check")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    rows = [row for arch in args.arch for row in run_arch(arch, args)]
    print("| arch | P | method | time (s) | x SDPA | peak (MiB) | x SDPA |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        mem = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        ratio = "-" if r["mem_ratio"] is None else f"{r['mem_ratio']:.2f}"
        print(
            f"| {r['arch']} | {r['tokens']} | {r['method']} | {r['time_s']:.3f} | "
            f"{r['time_ratio']:.2f} | {mem} | {ratio} |"
        )
    report = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "rows": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
