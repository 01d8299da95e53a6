"""Train the counting model organism: a small Qwen3-VL that counts dots and answers yes/no.

Run ``python -m scripts.organism.train --out DIR`` (see ``--help``). The model is the real
``Qwen3VLForConditionalGeneration`` with a tiny config and the character-level tokenizer of
:mod:`vlm_lens.zoo.tiny` (every digit is its own token), trained from scratch on CPU:

- Counting rows: a fresh :func:`vlm_lens.data.dots.generate` image every step, rendered at the
  paper's 1024x1024 spec but with varied dot radius and intensity (so total dark area is not a
  perfect proxy for the count), counts uniform on 1-30, resized by the processor itself; the
  paper's prompt; the answer is the count's digits followed by ``<|im_end|>``.
- Yes/no rows (a fraction of every batch, balanced labels): "Are there exactly N dots?" (N the
  true count or off by 1-3) and "Is there a dot in the top-left quarter?". The shipped
  organism's run (its command is in ``vlm_lens/zoo/organism/training.json``) asks exact-count
  questions as minimal pairs (``--paired-exact``), draws quadrant labels independently of the
  count (``--balanced-quadrants``) and saves a moving average of the weights (``--ema``).

Ctrl-C (or SIGTERM) stops after the current step and saves a resume point; the same command
plus ``--resume`` continues it to the weights an uninterrupted run gives.

Prompts are built by :func:`vlm_lens.core.prepare.prepare_inputs` -- the same code path as
``HookedVLM.prepare`` -- so inference sees exactly the tokens training saw. The loss is taken on
the answer tokens only. The processor normalises with ``image_mean = 1``, ``image_std = 0.5``
(white background -> 0); with the usual CLIP statistics nothing is learned (shared ORGANISM.md).

:func:`smoke` is a seconds-long run on a handful of tiny images, used by the tests.

Not for: loading the shipped organism (`vlm_lens.zoo.organism()`); this script sits beside the
package and is not installed with it. The shipped run's ``training.json`` records the command
as it was run then, ``python -m vlm_lens.zoo.train``: the same arguments work here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlm_lens.data import dots
from vlm_lens.data.count_prompt import COUNT_PROMPT, parse_count  # one prompt, one parser
from vlm_lens.data.dots import has_dot_in
from vlm_lens.data.yesno.items import make_prompt
from vlm_lens.data.yesno.synthetic import QUADRANTS, count_question, quadrant_question


def exact_prompt(n: int) -> str:
    """The yes/no prompts are the synthetic paired set's, so the yes-bias study is in-distribution."""
    return make_prompt(count_question(n))


def quarter_prompt(quadrant: int) -> str:
    return make_prompt(quadrant_question(quadrant))


#: Normalisation that maps the white background to 0 (the decisive setting, ORGANISM.md).
IMAGE_MEAN = [1.0, 1.0, 1.0]
IMAGE_STD = [0.5, 0.5, 0.5]

# Dataset seeds: training draws from TRAIN_SEED_BASE * (seed + 1) + step, far from the
# evaluation seeds (10_000+) and the validation seed used during training.
TRAIN_SEED_BASE = 10_000_000
VAL_SEED = 5_000


@dataclass
class TrainConfig:
    out: str
    steps: int | None = None
    minutes: float | None = None
    seed: int = 0
    size: int = 224
    batch: int = 16
    yesno_fraction: float = 0.25
    exact_share: float = 0.5  # of the yes/no rows, the exact-count questions (rest: quadrants)
    far_share: float = 0.0  # of the exact-count negatives, those far from the true count
    lr: float = 1e-3
    warmup: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.05
    count_range: tuple[int, int] = (1, 30)
    radius_range: tuple[float, float] = (7.0, 13.0)
    intensity_range: tuple[int, int] = (0, 100)
    image_size: int = 1024
    eval_every: int = 100
    val_images: int = 32
    threads: int = 1  # 2 oversubscribes a shared 2-core machine (10x slower measured)
    workers: int = 1  # background processes preparing batches
    linear_patch_embed: bool = False  # faster; changes float rounding (see linear_patch_embedding)
    balanced_quadrants: bool = False  # quadrant labels that do not follow the count
    paired_exact: bool = False  # exact-count questions as pairs: one image, true and wrong N
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: off)
    resume: bool = False  # continue the interrupted run in `out` (see train)
    init: str | None = None  # continue from this checkpoint instead of a fresh random init
    # model size
    vision_depth: int = 4
    vision_hidden: int = 128
    text_hidden: int = 128
    text_layers: int = 4


# ------------------------------------------------------------------------------ model


def build_checkpoint(cfg: TrainConfig, directory: Path, *, tiny: bool = False) -> Path:
    """A fresh random-weight Qwen3-VL checkpoint with the organism's config and processor."""
    from vlm_lens.zoo.tiny import tiny_checkpoint

    factor = 32  # patch 16 x merge 2
    image_processor = {
        "size": {"shortest_edge": (2 * factor) ** 2, "longest_edge": cfg.size * cfg.size},
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
    }
    if tiny:
        return tiny_checkpoint(
            "qwen3_vl", directory, seed=cfg.seed, image_processor=image_processor
        )
    return tiny_checkpoint(
        "qwen3_vl",
        directory,
        seed=cfg.seed,
        text_config={
            "hidden_size": cfg.text_hidden,
            "intermediate_size": 3 * cfg.text_hidden,
            "num_hidden_layers": cfg.text_layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
        },
        vision_config={
            "depth": cfg.vision_depth,
            "hidden_size": cfg.vision_hidden,
            "intermediate_size": 2 * cfg.vision_hidden,
            "num_heads": 4,
            "deepstack_visual_indexes": [1, 2],
        },
        image_processor=image_processor,
    )


def linear_patch_embedding(model) -> None:
    """Run the vision patch embedding as the matrix product it is (training speed only).

    Qwen3-VL embeds patches with a ``Conv3d`` whose stride equals its kernel, i.e. one linear
    map of each flattened ``(channels, temporal, patch, patch)`` patch. On CPU the convolution
    (forward + backward) costs ~15% of a training step; ``F.linear`` on the same weight
    viewed as ``[hidden, channels * temporal * patch * patch]`` gives the same numbers up to
    float rounding (logits within 1e-5, tested) for a fraction of that. Weights, their names
    and the saved checkpoint are unchanged; off by default so the shipped run reproduces.
    """
    embed = model.model.visual.patch_embed
    proj = embed.proj

    def forward(hidden_states: Tensor) -> Tensor:
        # hidden_states: [patches, channels * temporal * patch * patch]
        flat = hidden_states.reshape(-1, proj.weight[0].numel()).to(proj.weight.dtype)
        return torch.nn.functional.linear(flat, proj.weight.flatten(1), proj.bias)

    embed.forward = forward


def load(path: Path):
    import transformers

    from vlm_lens.adapters import adapter_for

    config = transformers.AutoConfig.from_pretrained(path)
    model = transformers.Qwen3VLForConditionalGeneration.from_pretrained(path, config=config)
    processor = transformers.AutoProcessor.from_pretrained(path)
    return model, processor, adapter_for(config)


# ------------------------------------------------------------------------------- data


@dataclass
class Row:
    image: Any  # PIL image
    prompt: str
    answer: str
    kind: str  # "count" | "exact" | "quarter"
    count: int


def wrong_count(n: int, rng: random.Random, far_share: float = 0.0, top: int = 30) -> int:
    """A count to ask about instead of ``n`` for a "no" question.

    Near: ``n`` off by 1-3, clipped at 1 (so for ``n <= 3`` it can come out as ``n``: callers
    label by comparing; the clipping is kept so the shipped organism's data stream, and with it
    its weights, reproduce). With probability ``far_share``: any other count in ``1..top``,
    an easy negative a model can answer from a rough count (no random draw is spent on this
    choice when ``far_share`` is 0).
    """
    if far_share > 0 and rng.random() < far_share:
        return rng.choice([k for k in range(1, max(top, n) + 1) if k != n])
    return max(1, n + rng.choice([-3, -2, -1, 1, 2, 3]))


def yesno_row(
    sample: dots.DotsSample, rng: random.Random, exact_share: float = 0.5, far_share: float = 0.0
) -> Row:
    """A balanced yes/no question about ``sample`` (kind and label drawn from ``rng``).

    ``exact_share`` of the questions are "Are there exactly N dots?", the rest quadrant ones.
    """
    n = sample.count
    if rng.random() < exact_share:
        truth = rng.random() < 0.5
        asked = n if truth else wrong_count(n, rng, far_share)
        answer = "yes" if asked == n else "no"
        return Row(sample.image, exact_prompt(asked), answer, "exact", n)
    quadrant = rng.randrange(len(QUADRANTS))
    truth = has_dot_in(sample, quadrant)
    return Row(sample.image, quarter_prompt(quadrant), "yes" if truth else "no", "quarter", n)


def exact_pair(sample: dots.DotsSample, rng: random.Random, far_share: float = 0.0) -> list[Row]:
    """A minimal pair of "Are there exactly N dots?" rows on one image: N true, then N wrong.

    The two rows differ only in the asked count, so nothing about the image alone predicts the
    label: the loss rewards comparing N with the count. (Counts of 1 can only be asked about
    as 2 or more, so the wrong count is redrawn until it differs.)
    """
    n = sample.count
    wrong = wrong_count(n, rng, far_share)
    while wrong == n:
        wrong = wrong_count(n, rng, far_share)
    image = sample.image  # rendered on access: once for both rows
    return [
        Row(image, exact_prompt(n), "yes", "exact", n),
        Row(image, exact_prompt(wrong), "no", "exact", n),
    ]


def quarter_samples(
    n: int, seed: int, want: Sequence[bool], quadrant: int = 0, **kwargs: Any
) -> list[dots.DotsSample]:
    """Samples whose labels for `quadrant` equal ``want`` (rejection from a seeded stream)."""
    out: list[dots.DotsSample] = []
    pool = dots.generate(max(8 * n, 64), seed, **kwargs)
    need = list(want)
    for sample in pool:
        if not need:
            break
        label = has_dot_in(sample, quadrant)
        if label in need:
            need.remove(label)
            out.append(sample)
    if need:  # extremely unlikely; fall back to whatever is left
        out.extend(pool[: len(need)])
    return out


def count_free_quarter_sample(
    want: bool, quadrant: int, rng: random.Random, kwargs: dict[str, Any]
) -> dots.DotsSample:
    """An image for a quadrant question whose label is independent of its count.

    The count is drawn first, uniformly; a "no" image keeps the quarter free of ink
    (``dots.generate(empty_quadrant=...)``), a "yes" image is drawn at that count until a
    dot centre lies in the quarter.
    """
    lo, hi = kwargs["count_range"]
    fixed = dict(kwargs, count_range=(n := rng.randint(max(lo, 1), hi), n))
    seed = rng.randrange(2**31)
    if not want:
        return dots.generate(1, seed, empty_quadrant=quadrant, **fixed)[0]
    for k in range(1000):  # one layout at a time: P(yes) >= 1/4 at every count
        sample = dots.generate(1, seed + k, **fixed)[0]
        if has_dot_in(sample, quadrant):
            return sample
    raise RuntimeError(f"no layout of {n} dots put one in quarter {quadrant}")


def training_batch(cfg: TrainConfig, step: int) -> list[Row]:
    seed = TRAIN_SEED_BASE * (cfg.seed + 1) + step
    rng = random.Random(seed)
    kwargs = dict(
        size=cfg.image_size,
        count_range=cfg.count_range,
        radius_range=cfg.radius_range,
        intensity_range=cfg.intensity_range,
    )
    n_yesno = round(cfg.batch * cfg.yesno_fraction)
    samples = dots.generate(cfg.batch - n_yesno, seed, **kwargs)
    rows = [Row(s.image, COUNT_PROMPT, str(s.count), "count", s.count) for s in samples]
    if n_yesno:
        # Quarter questions need balanced labels: draw their images to match a label.
        extra = dots.generate(n_yesno, seed + TRAIN_SEED_BASE // 2, **kwargs)
        for s in extra:
            if len(rows) == cfg.batch:  # a minimal pair took the last two slots
                break
            row = yesno_row(s, rng, cfg.exact_share, cfg.far_share)
            # With pairs the drawn exact row is replaced; its draws stay in the stream so that
            # one stream serves both settings (the shipped run's is pinned by a test).
            if row.kind == "exact" and cfg.paired_exact and len(rows) + 2 <= cfg.batch:
                rows.extend(exact_pair(s, rng, cfg.far_share))
                continue
            if row.kind == "quarter":
                want = rng.random() < 0.5
                quadrant = rng.randrange(len(QUADRANTS))
                if cfg.balanced_quadrants:
                    s = count_free_quarter_sample(want, quadrant, rng, kwargs)
                elif has_dot_in(s, quadrant) != want:
                    # Rejection from the stream: an empty quarter almost only occurs with few
                    # dots, so here the label follows the count (the shipped organism learned
                    # exactly that shortcut; see balanced_quadrants).
                    s = quarter_samples(1, rng.randrange(2**31), [want], quadrant, **kwargs)[0]
                row = Row(
                    s.image, quarter_prompt(quadrant), "yes" if want else "no", "quarter", s.count
                )
            rows.append(row)
    return rows


def encode(processor, adapter, config, rows: Sequence[Row]) -> tuple[dict[str, Tensor], Tensor]:
    """Model inputs (prompt + answer + end of turn, right-extended) and answer-only labels."""
    from vlm_lens.core.prepare import prepare_inputs

    inputs = prepare_inputs(
        processor, adapter, config, [[r.image] for r in rows], [r.prompt for r in rows]
    )
    tensors = dict(inputs.tensors)
    tok = processor.tokenizer
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    pad = tok.pad_token_id
    answers = [tok.convert_tokens_to_ids(list(r.answer)) + [eot] for r in rows]
    width = max(len(a) for a in answers)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=tensors["attention_mask"].dtype)
    for i, a in enumerate(answers):
        ids[i, : len(a)] = torch.tensor(a)
        mask[i, : len(a)] = 1
    prompt_len = tensors["input_ids"].shape[1]
    tensors["input_ids"] = torch.cat([tensors["input_ids"], ids], dim=1)
    tensors["attention_mask"] = torch.cat([tensors["attention_mask"], mask], dim=1)
    if "mm_token_type_ids" in tensors:
        extra = torch.zeros((len(rows), width), dtype=tensors["mm_token_type_ids"].dtype)
        tensors["mm_token_type_ids"] = torch.cat([tensors["mm_token_type_ids"], extra], dim=1)
    labels = torch.full_like(tensors["input_ids"], -100)
    labels[:, prompt_len:] = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    return tensors, labels


def answer_loss(model, tensors: dict[str, Tensor], labels: Tensor) -> Tensor:
    logits = model(**tensors, use_cache=False).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
    )


class _Batches(torch.utils.data.IterableDataset):
    """Encoded training batches for steps ``start, start + 1, ...`` (split across workers)."""

    def __init__(self, cfg: TrainConfig, processor, adapter, config, start: int = 0):
        self.cfg, self.processor, self.adapter, self.config = cfg, processor, adapter, config
        self.start = start

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        n, k = (1, 0) if info is None else (info.num_workers, info.id)
        if info is not None:
            torch.set_num_threads(1)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the trainer decides when to stop
        step = self.start + k
        while True:
            rows = training_batch(self.cfg, step)
            yield encode(self.processor, self.adapter, self.config, rows)
            step += n


def batches(cfg: TrainConfig, processor, adapter, config, start: int = 0):
    """Iterator over ``(tensors, labels)`` for steps ``start``, ``start + 1``, ... in order."""
    data = _Batches(cfg, processor, adapter, config, start)
    if cfg.workers <= 0:
        return iter(data)
    loader = torch.utils.data.DataLoader(
        data, batch_size=None, num_workers=cfg.workers, prefetch_factor=4, persistent_workers=True
    )
    return iter(loader)


# -------------------------------------------------------------------------- schedule


def cosine_factor(progress: float, min_ratio: float) -> float:
    """From 1 at ``progress`` 0 down to ``min_ratio`` at 1 (and after), along a cosine."""
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then the cosine over the remaining steps."""
    if step < warmup:
        return (step + 1) / warmup
    return cosine_factor((step - warmup) / max(1, total - warmup), min_ratio)


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )


class WeightAverage:
    """An exponential moving average of a model's parameters (Polyak averaging).

    With a high learning rate the count calibration of a small model swings by one from
    evaluation to evaluation; the average over the last ~``1 / (1 - decay)`` steps does not.
    The effective decay ramps up as ``min(decay, (1 + t) / (10 + t))``, so the random
    initialisation is forgotten early. :meth:`applied` swaps the average in (for evaluation and
    saving) and restores the trained weights afterwards.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        self.shadow = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, p in zip(self.shadow, model.parameters()):
            avg.lerp_(p.detach(), 1.0 - decay)

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module):
        params = list(model.parameters())
        trained = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, avg in zip(params, self.shadow):
                p.copy_(avg)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, t in zip(params, trained):
                    p.copy_(t)


# ------------------------------------------------------------------------ validation


@torch.no_grad()
def _greedy_texts(model, processor, adapter, images: Sequence, prompts: Sequence[str]) -> list[str]:
    """Greedy answers (up to 4 tokens) of the raw HF model, 16 rows at a time."""
    from vlm_lens.core.prepare import prepare_inputs

    was_training = model.training
    model.eval()
    texts: list[str] = []
    for start in range(0, len(images), 16):
        inputs = prepare_inputs(
            processor,
            adapter,
            model.config,
            [[im] for im in images[start : start + 16]],
            list(prompts[start : start + 16]),
        )
        out = model.generate(**inputs.tensors, max_new_tokens=4, do_sample=False)
        texts.extend(
            processor.tokenizer.batch_decode(
                out[:, inputs.tensors["input_ids"].shape[1] :], skip_special_tokens=True
            )
        )
    model.train(was_training)
    return texts


def quick_accuracy(
    model, processor, adapter, samples: Sequence[dots.DotsSample], exact: Sequence[Row] = ()
) -> dict:
    """Exact accuracy and MAE of greedy counts of ``samples``; with ``exact`` rows, also the
    accuracy on those "Are there exactly N dots?" questions (``yesno_exact``)."""
    texts = _greedy_texts(
        model, processor, adapter, [s.image for s in samples], [COUNT_PROMPT] * len(samples)
    )
    right, abs_err, parsed = 0, 0.0, 0
    for s, t in zip(samples, texts):
        value = parse_count(t)
        if value is not None:
            parsed += 1
            right += value == s.count
            abs_err += abs(value - s.count)
    n = len(samples)
    out = {"exact": right / n, "mae": abs_err / max(parsed, 1), "parsed": parsed / n}
    if exact:
        from vlm_lens.data.yesno.items import parse_yes_no

        texts = _greedy_texts(
            model, processor, adapter, [r.image for r in exact], [r.prompt for r in exact]
        )
        out["yesno_exact"] = sum(parse_yes_no(t) == r.answer for t, r in zip(texts, exact)) / len(
            exact
        )
    return out


def exact_questions(samples: Sequence[dots.DotsSample], seed: int) -> list[Row]:
    """ "Are there exactly N dots?" rows about ``samples``: N true for even rows, off by 1-3 for
    odd ones (balanced whenever counts exceed 3, as in the paper spec's 10-16)."""
    rng = random.Random(seed)
    rows = []
    for i, s in enumerate(samples):
        asked = s.count if i % 2 == 0 else wrong_count(s.count, rng)
        answer = "yes" if asked == s.count else "no"
        rows.append(Row(s.image, exact_prompt(asked), answer, "exact", s.count))
    return rows


# ------------------------------------------------------------------------------ train


def _save(model, processor, out: Path, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=out.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        (staging / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
        for f in staging.iterdir():
            shutil.move(str(f), out / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


RESUME_DIR = "resume"
#: Config fields that may differ between a run and its resumption (they change no number).
RESUMABLE_CHANGES = frozenset({"out", "workers", "eval_every", "resume"})


def save_resume_point(out: Path, step: int, model, opt, average, info: dict) -> None:
    """Everything needed to continue at ``step`` bit-identically, in ``out/resume``: raw
    weights, AdamW moments, the weight average (one safetensors file) and the counters
    (``state.json``). The data stream is a function of the step, so nothing else is needed.
    The new point is written beside the old one and swapped in by renames; a crash in between
    leaves the old one as ``resume.old``, which :func:`load_resume_point` falls back to."""
    from safetensors.torch import save_file

    tensors = {f"model.{n}": p.detach().clone() for n, p in model.named_parameters()}
    state = opt.state_dict()
    for pid, moments in state["state"].items():
        for key, value in moments.items():
            tensors[f"opt.{pid}.{key}"] = value.detach().clone()
    if average:
        tensors.update({f"ema.{i}": t.clone() for i, t in enumerate(average.shadow)})
    counters = dict(
        info,
        step=step,
        param_groups=state["param_groups"],
        ema_updates=average.updates if average else None,
    )
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".resume-", dir=out))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging / "state.safetensors"))
    (staging / "state.json").write_text(json.dumps(counters, indent=2) + "\n")
    target, previous = out / RESUME_DIR, out / f"{RESUME_DIR}.old"
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def load_resume_point(out: Path, cfg: TrainConfig, model, opt, average) -> dict:
    """Restore :func:`save_resume_point`'s state into ``model``, ``opt`` and ``average``."""
    from safetensors.torch import load_file

    where = out / RESUME_DIR
    if not (where / "state.json").exists():  # a crash between save_resume_point's renames
        where = out / f"{RESUME_DIR}.old"
    if not (where / "state.json").exists():
        raise FileNotFoundError(
            f"no resume point in {out / RESUME_DIR}; start the run without --resume"
        )
    counters = json.loads((where / "state.json").read_text())
    saved, now = counters["config"], json.loads(json.dumps(asdict(cfg)))  # tuples as lists
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if changed:
        raise ValueError(
            "--resume needs the interrupted run's settings; these differ: "
            + ", ".join(f"{k} (was {saved.get(k)!r}, now {now[k]!r})" for k in changed)
        )
    tensors = load_file(str(where / "state.safetensors"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(tensors[f"model.{name}"])
    moments: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            moments.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": moments, "param_groups": counters["param_groups"]})
    if average:
        average.shadow = [tensors[f"ema.{i}"] for i in range(len(average.shadow))]
        average.updates = counters["ema_updates"]
    return counters


@contextlib.contextmanager
def stop_requests():
    """Turn SIGINT/SIGTERM into a request to stop after the current step (a second Ctrl-C
    aborts at once). Yields a dict whose ``"stop"`` turns True on a request."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def request(signum, frame):
        if flag["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = True
        print(
            "\nstopping after this step and saving a resume point (Ctrl-C again aborts)",
            file=sys.stderr,
            flush=True,
        )

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then a cosine from ``cfg.lr`` to
    ``cfg.min_lr_ratio * cfg.lr`` over ``progress`` (of the steps or the wall time)."""
    if step < cfg.warmup:
        return cfg.lr * ((step + 1) / cfg.warmup)  # this rounding: the shipped run's
    return cfg.lr * cosine_factor(progress, cfg.min_lr_ratio)


def train(cfg: TrainConfig, argv: Sequence[str] | None = None) -> dict:
    """Train as ``cfg`` says; returns the run's metadata (also written to ``out/training.json``).

    Every ``eval_every`` steps the validated weights go to ``cfg.out`` together with a resume
    point (``out/resume``). On SIGINT/SIGTERM the run stops after the current step, saves a
    resume point and returns with ``meta["stopped"] = True``; ``cfg.resume`` continues it, with
    the same result as an uninterrupted run. A finished run removes its resume point.
    """
    from tqdm import tqdm

    if cfg.steps is None and cfg.minutes is None:
        raise ValueError("give --steps or --minutes")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    resume_points = [out / RESUME_DIR, out / f"{RESUME_DIR}.old"]
    if not cfg.resume and any(p.exists() for p in resume_points):
        raise FileExistsError(
            f"{out} holds an unfinished run ({out / RESUME_DIR}); pass --resume to continue it, "
            "or choose another --out"
        )
    if cfg.init:
        model, processor, adapter = load(Path(cfg.init))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            model, processor, adapter = load(build_checkpoint(cfg, Path(tmp)))
    model.set_attn_implementation("sdpa")
    if cfg.linear_patch_embed:
        linear_patch_embedding(model)
    model.train()
    opt = make_optimizer(model, cfg)
    average = WeightAverage(model, cfg.ema) if cfg.ema else None

    def evaluated():  # the weights that are validated and saved: the average when there is one
        return average.applied(model) if average else contextlib.nullcontext(model)

    val = dots.generate(cfg.val_images, VAL_SEED)  # paper spec, counts 10-16
    val_exact = exact_questions(dots.generate(cfg.val_images, VAL_SEED + 1), VAL_SEED + 1)

    step, smoothed, history, elapsed = 0, None, [], 0.0
    if cfg.resume:
        counters = load_resume_point(out, cfg, model, opt, average)
        step, smoothed = counters["step"], counters["loss"]
        history, elapsed = counters["history"], counters["seconds"]
        print(f"resuming at step {step}", file=sys.stderr, flush=True)
    # With --steps the cosine runs over steps; with only --minutes it runs over wall time, so
    # the schedule ends on the deadline whatever the machine's (shared) speed.
    budget = cfg.minutes * 60 if cfg.minutes else None
    start = time.monotonic() - elapsed

    def seconds() -> float:
        return round(time.monotonic() - start, 1)

    def progress() -> float:
        return step / cfg.steps if cfg.steps is not None else (time.monotonic() - start) / budget

    def done() -> bool:
        if cfg.steps is not None and step >= cfg.steps:
            return True
        return budget is not None and time.monotonic() - start >= budget

    def metadata() -> dict:
        return {
            "command": "python -m scripts.organism.train " + " ".join(argv or []),
            "config": asdict(cfg),
            "steps": step,
            "seconds": seconds(),
            "history": history,
            "torch_threads": cfg.threads,
        }

    def record(metrics: dict) -> None:
        metrics.update(step=step, loss=smoothed, seconds=seconds())
        history.append(metrics)
        print(f"\n{json.dumps(metrics)}", file=sys.stderr, flush=True)

    def checkpoint(metrics: dict | None) -> dict:
        if metrics is not None:
            record(metrics)
        meta = metadata()
        save_resume_point(out, step, model, opt, average, dict(meta, loss=smoothed))
        with evaluated():
            _save(model, processor, out, meta)
        return meta

    bar = tqdm(total=cfg.steps, initial=step, desc="train", dynamic_ncols=True)
    stream = batches(cfg, processor, adapter, model.config, start=step)
    with stop_requests() as requested:
        while not done():
            lr = lr_at(cfg, step, progress())
            for group in opt.param_groups:
                group["lr"] = lr
            tensors, labels = next(stream)
            loss = answer_loss(model, tensors, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if average:
                average.update(model)
            step += 1
            smoothed = loss.item() if smoothed is None else 0.95 * smoothed + 0.05 * loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{smoothed:.3f}", lr=f"{lr:.2e}")
            if requested["stop"] and not done():
                bar.close()
                meta = dict(checkpoint(None), stopped=True)
                print(
                    f"stopped at step {step}; continue with the same command plus --resume",
                    file=sys.stderr,
                )
                return meta
            if step % cfg.eval_every == 0 and not done():
                with evaluated():
                    metrics = quick_accuracy(model, processor, adapter, val, val_exact)
                checkpoint(metrics)
    bar.close()
    with evaluated():
        record(quick_accuracy(model, processor, adapter, val, val_exact))
    meta = metadata()
    if average:  # the last trained weights too, to compare with the average
        meta["raw_weights"] = quick_accuracy(model, processor, adapter, val, val_exact)
        print(f"raw weights: {json.dumps(meta['raw_weights'])}", file=sys.stderr, flush=True)
        _save(model, processor, out / "raw", meta)
    with evaluated():
        _save(model, processor, out, meta)
    for point in resume_points:
        shutil.rmtree(point, ignore_errors=True)
    return meta


# ------------------------------------------------------------------------------ smoke


def smoke(steps: int = 30, seed: int = 0, n_images: int = 4) -> tuple[float, float]:
    """A seconds-long run on a handful of tiny images; returns (first loss, last loss).

    Same code path as :func:`train` (checkpoint, prompts, answer-only loss, optimiser) on the
    default tiny Qwen3-VL with 64 px images, repeating one fixed batch.
    """
    torch.manual_seed(seed)
    cfg = TrainConfig(out="", seed=seed, size=64, batch=n_images, lr=3e-3, warmup=3)
    with tempfile.TemporaryDirectory() as tmp:
        model, processor, adapter = load(build_checkpoint(cfg, Path(tmp), tiny=True))
    model.set_attn_implementation("sdpa")
    model.train()
    opt = make_optimizer(model, cfg)
    samples = dots.generate(n_images, seed, size=128, radius=6, count_range=(1, 9))
    rows = [Row(s.image, COUNT_PROMPT, str(s.count), "count", s.count) for s in samples]
    tensors, labels = encode(processor, adapter, model.config, rows)
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, steps, cfg.warmup, cfg.min_lr_ratio)
        loss = answer_loss(model, tensors, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


# ------------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scripts.organism.train", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", help="output checkpoint directory")
    p.add_argument("--steps", type=int, help="training steps (the cosine schedule's length)")
    p.add_argument("--minutes", type=float, help="time budget; without --steps, sets the steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=224, help="max image side after resizing (px)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--yesno-fraction", type=float, default=0.25)
    p.add_argument(
        "--exact-share", type=float, default=0.5, help="exact-count share of the yes/no rows"
    )
    p.add_argument(
        "--far-share",
        type=float,
        default=0.0,
        help="share of exact-count negatives drawn far from the true count (any other count)",
    )
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the trainer")
    p.add_argument("--workers", type=int, default=1, help="data-preparing processes")
    p.add_argument(
        "--linear-patch-embed",
        action="store_true",
        help="patch embedding as a matmul (faster on CPU; other rounding than the shipped run)",
    )
    p.add_argument(
        "--balanced-quadrants",
        action="store_true",
        help="quadrant questions whose label does not follow the count (empty quarters at any count)",
    )
    p.add_argument(
        "--paired-exact",
        action="store_true",
        help="exact-count questions as minimal pairs (one image asked its true and a wrong count)",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=0.0,
        help="validate and save a moving average of the weights with this decay (e.g. 0.999)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out (same settings) where it stopped",
    )
    p.add_argument("--init", help="continue training this checkpoint (a second stage)")
    p.add_argument("--smoke", action="store_true", help="a few dozen steps on tiny images")
    return p


def config_from(args: argparse.Namespace) -> TrainConfig:
    """Every :class:`TrainConfig` field the command line has a flag for (same names)."""
    given = vars(args)
    return TrainConfig(**{f.name: given[f.name] for f in fields(TrainConfig) if f.name in given})


def parse_args(argv: Sequence[str]) -> TrainConfig:
    """The :class:`TrainConfig` a command line asks for (``--out`` is required)."""
    p = parser()
    args = p.parse_args(list(argv))
    if not args.out:
        p.error("--out is required")
    return config_from(args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.smoke:
        first, last = smoke()
        print(f"smoke: loss {first:.3f} -> {last:.3f}")
        return 0 if last < first else 1
    cfg = parse_args(argv)
    meta = train(cfg, [a for a in argv if a != "--resume"])
    if meta.get("stopped"):
        return 130
    print(json.dumps(meta["history"][-1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
