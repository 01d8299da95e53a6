"""Bad inputs through the API, the loaders and the CLI, and the message each one now gets.

Each case does one wrong thing a user could do and says which words the refusal must hold
(the cause: the flag, the file, the value, the hook point). `run_case` calls it and
classifies the outcome: "error" (an exception whose message holds those words), "warning"
(a warning that does), "exit N" (the CLI's one line on stderr), or "SILENT" / "UNCLEAR"
when nothing was said or what was said does not name the cause. `tests/test_bad_inputs.py`
asserts that every case is refused clearly; run this file to print the table::

    python -m scripts.bad_inputs [--markdown]

Not for: testing that good inputs work (the rest of the test-suite does).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

PROMPT = "How many dots are there in the image? Answer directly. Answer: "


@dataclass
class Case:
    area: str  # "API", "images", "loaders", "CLI"
    what: str  # the bad input, as a user would describe it
    run: Callable[[Env], Any]
    says: tuple[str, ...]  # words the message must hold (case-insensitive)


class Env:
    """What the cases share: a scratch folder, a tiny checkpoint, a model and one input
    (built on first use)."""

    def __init__(self, root: Path, checkpoint: Path | None = None):
        self.root = root
        self._checkpoint = checkpoint
        self._model = None
        self._inputs = None

    @property
    def checkpoint(self) -> Path:
        if self._checkpoint is None:
            from vlm_lens import zoo

            with contextlib.redirect_stderr(io.StringIO()):
                self._checkpoint = zoo.tiny_checkpoint("qwen3_vl", self.root / "zoo")
        return self._checkpoint

    @property
    def model(self):
        if self._model is None:
            from vlm_lens import HookedVLM

            with contextlib.redirect_stderr(io.StringIO()):
                self._model = HookedVLM.from_pretrained(self.checkpoint)
        return self._model

    @property
    def inputs(self):
        if self._inputs is None:
            arr = np.full((64, 64), 255, dtype=np.uint8)
            arr[20:30, 20:30] = 0
            self._inputs = self.model.prepare(images=[Image.fromarray(arr)], prompt=PROMPT)
        return self._inputs

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def hook(self, name: str, fn: Callable) -> Any:
        with torch.no_grad():
            return self.model.run_with_hooks(self.inputs, fwd_hooks=[(name, fn)])


class CLIRefused(Exception):
    """The CLI refused: its exit status and the line it printed."""


def cli(*argv: str) -> Callable[[Env], None]:
    """A case running `vlm-lens ARGV --out <scratch>`; "<tiny>" is the tiny checkpoint."""

    def run(env: Env) -> None:
        from vlm_lens.cli import main

        out = env.root / "cli-out"
        args = [str(env.checkpoint) if a == TINY else a for a in argv]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main([*args, "--out", str(out), "--no-progress"])
            except SystemExit as done:
                code = done.code
        lines = err.getvalue().strip().splitlines()
        if out.exists():
            raise AssertionError(f"--out was written before the refusal: {lines}")
        if code:
            raise CLIRefused(f"exit {code}", lines)

    return run


# ----------------------------------------------------------------------------- the cases

TINY = "<tiny>"  # replaced by the tiny qwen3_vl checkpoint's folder

# CLI arguments (without --out) and what the one line must say. Each is refused before a model
# is loaded or --out is touched (tests/test_cli.py checks that too).
CLI_BAD_ARGUMENTS = [
    (["count", "--n", "0"], "argument --n: must be >= 1, got 0"),
    (["count", "--n", "-3"], "argument --n: must be >= 1, got -3"),
    (["count", "--limit", "-5"], "argument --limit: must be >= 1, got -5"),
    (["count", "--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["count", "--max-new-tokens", "0"], "argument --max-new-tokens: must be >= 1"),
    (["count", "--radius", "nan"], "argument --radius: must be a finite number > 0"),
    (["count", "--model", TINY, "--layers", "99"], "--layers: layer 99 out of range"),
    (
        ["count", "--model", TINY, "--regrounding-layers", "9", "--regrounding", "restore"],
        "--regrounding-layers: layer 9",
    ),
    (["count", "--model", TINY, "--regrounding", "scale:x"], "--regrounding scale:x"),
    (["count", "--model", TINY, "--size", "20"], "--size/--radius"),
    (["count", "--model", "/no/such/model"], "'/no/such/model': no such folder"),
    (["count", "--model", TINY, "--shard", "2/2"], "--shard 2/2: shard must satisfy"),
    (["count", "--model", TINY, "--device", "gpu0"], "--device 'gpu0'"),
    (["count", "--model", TINY, "--dtype", "int8"], "--dtype int8: not a floating-point"),
    (["count", "--model", TINY, "--device", "cpu", "--device-map", "auto"], "not both"),
    (["yesbias", "--fractions", "1.5"], "argument --fractions: must be a finite number in (0, 1]"),
    (["yesbias", "--fractions", "0"], "argument --fractions"),
    (["yesbias", "--max-new-tokens", "0"], "argument --max-new-tokens: must be >= 1"),
    (["yesbias", "--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["yesbias", "--limit", "-5"], "argument --limit: must be >= 1"),
    (["yesbias", "--image-alpha", "-1"], "argument --image-alpha"),
    (["yesbias", "--model", "./missing-model"], "'./missing-model': no such folder"),
    (
        ["yesbias", "--model", TINY, "--benchmark", "pope=/no/such/pope"],
        "/no/such/pope does not exist",
    ),
    (["yesbias", "--model", TINY, "--benchmark", "nobench=/tmp"], "unknown benchmark 'nobench'"),
    (["yesbias", "--model", TINY, "--benchmark", "pope"], "give a local path"),
    (["yesbias", "--model", TINY, "--tag", "../up"], "--tag '../up': must be one folder name"),
]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _png(path: Path, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), "white").save(path)
    return path


def _pope(env: Env, name: str, image: str, label: Any = "yes") -> Path:
    """A POPE folder with one question whose image name is `image`."""
    root = env.folder(name)
    _png(root / "images" / "ok.png")
    record = {"question_id": 1, "image": image, "text": "Is there a dog?", "label": label}
    _write(root / "coco_pope_random.json", json.dumps(record) + "\n")
    return root


def _pope_symlink(env: Env):
    from vlm_lens.data.yesno import load_benchmark

    outside = _png(env.folder("outside") / "secret.png")
    root = _pope(env, "pope-link", "link.png")
    link = root / "images" / "link.png"
    if not link.exists():
        link.symlink_to(outside)
    return load_benchmark("pope", root)


def _load(name: str, folder: str, image: str, label: Any = "yes"):
    def run(env: Env):
        from vlm_lens.data.yesno import load_benchmark

        return load_benchmark(name, _pope(env, folder, image, label))

    return run


def _truncated_png(env: Env):
    from vlm_lens.data.images import load_image

    good = _png(env.folder("img") / "good.png", 64)
    bad = env.folder("img") / "truncated.png"
    bad.write_bytes(good.read_bytes()[:60])
    return load_image(bad)


def _bomb(env: Env):
    from vlm_lens.data.images import load_image

    path = env.folder("img") / "bomb.png"
    if not path.exists():
        Image.new("1", (20_000, 20_000)).save(path)  # 400 M pixels, ~50 kB compressed
    return load_image(path)


def _incomplete_unit(env: Env):
    from vlm_lens.data.yesno import synthetic
    from vlm_lens.metrics.yesno import evaluate

    items = synthetic.generate(2, seed=0)[1:]  # the first unit's first item is lost
    return evaluate("synthetic", items, {it.item_id: "yes" for it in items}, n_boot=10)


def _run_lock(env: Env):
    from vlm_lens.studies import runlog

    folder = env.folder("locked")
    with runlog.run_lock(folder), runlog.run_lock(folder):
        pass


def _hook_wrong_return(value: Callable[[torch.Tensor], Any], name: str):
    return lambda env: env.hook(name, lambda t, hook: value(t))


def _nan_at_first(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


CASES: list[Case] = [
    # --- API: loading and naming
    Case(
        "API",
        "HookedVLM.from_pretrained('/no/such/model')",
        lambda env: _from_pretrained("/no/such/model"),
        ("/no/such/model", "no such folder"),
    ),
    Case(
        "API",
        "from_pretrained(a file, not a folder)",
        lambda env: _from_pretrained(env.checkpoint / "config.json"),
        ("config.json", "is a file"),
    ),
    Case(
        "API",
        "from_pretrained(a folder without config.json)",
        lambda env: _from_pretrained(env.folder("empty-model")),
        ("empty-model", "no config.json"),
    ),
    Case(
        "API",
        "from_pretrained(device='cpu', device_map='auto')",
        lambda env: _from_pretrained(env.checkpoint, device="cpu", device_map="auto"),
        ("device_map",),
    ),
    Case(
        "API",
        "from_pretrained(dtype='float33')",
        lambda env: _from_pretrained(env.checkpoint, dtype="float33"),
        ("float33",),
    ),
    Case(
        "API",
        "hook name with a typo (hook_patern)",
        _hook_wrong_return(lambda t: t, "blocks.0.attn.hook_patern"),
        ("hook_patern", "did you mean"),
    ),
    Case(
        "API",
        "hook on layer 99 of a 4-layer model",
        _hook_wrong_return(lambda t: t, "blocks.99.attn.hook_pattern"),
        ("99",),
    ),
    Case(
        "API",
        "hook returns a [b, 1, q, k] pattern (would broadcast)",
        _hook_wrong_return(lambda t: t[:, :1], "blocks.0.attn.hook_pattern"),
        ("blocks.0.attn.hook_pattern", "[1, 1,"),
    ),
    Case(
        "API",
        "hook returns float64 for a float32 input",
        _hook_wrong_return(lambda t: t.double(), "blocks.0.hook_resid_post"),
        ("blocks.0.hook_resid_post", "float64", "float32"),
    ),
    Case(
        "API",
        "hook returns a tensor on another device",
        _hook_wrong_return(lambda t: t.to("meta"), "blocks.0.mlp.hook_post"),
        ("blocks.0.mlp.hook_post", "meta", "cpu"),
    ),
    Case(
        "API",
        "hook puts a NaN into the residual stream",
        _hook_wrong_return(_nan_at_first, "blocks.1.hook_resid_pre"),
        ("blocks.1.hook_resid_pre", "NaN"),
    ),
    Case(
        "API",
        "hook returns a tuple",
        _hook_wrong_return(lambda t: (t,), "hook_embed"),
        ("hook_embed", "tuple"),
    ),
    Case(
        "API",
        "select(fn, rows='first')",
        lambda env: _select(rows="first"),
        ("rows", "first"),
    ),
    Case("API", "select(fn, chunk=0)", lambda env: _select(chunk=0), ("chunk", "0")),
    Case(
        "API",
        "gini_sparsity of negative weights",
        lambda env: _metric("gini_sparsity", torch.tensor([0.5, -0.1, 0.6])),
        ("non-negative",),
    ),
    Case(
        "API",
        "normalized_entropy of an empty axis",
        lambda env: _metric("normalized_entropy", torch.zeros(3, 0)),
        ("non-empty", "(3, 0)"),
    ),
    Case(
        "API",
        "redistribute_pattern(fraction=1.5)",
        lambda env: _redistribute(fraction=1.5),
        ("fraction", "1.5"),
    ),
    Case("API", "dots.generate(n=-1)", lambda env: _dots(n=-1), ("n must be", "-1")),
    Case("API", "dots.generate(seed=-1)", lambda env: _dots(n=1, seed=-1), ("seed", "-1")),
    Case(
        "API",
        "dots.generate(size=20, radius=10): dots cannot fit",
        lambda env: _dots(n=1, size=20),
        ("cannot fit", "20x20"),
    ),
    Case("API", "Shard.parse('3/2')", lambda env: _shard("3/2"), ("3/2",)),
    Case("API", "resolve_layers('Q5', 4)", lambda env: _layers("Q5", 4), ("Q5",)),
    Case(
        "API",
        "run lock taken twice (a second run into the same folder)",
        _run_lock,
        ("in use by another process", "locked"),
    ),
    Case(
        "API",
        "model.prepare(prompt=None)",
        lambda env: env.model.prepare(images=None, prompt=None),
        ("prompt", "None"),
    ),
    Case(
        "API",
        "a hook that is not a function (5)",
        lambda env: env.hook("blocks.0.attn.hook_pattern", 5),
        ("blocks.0.attn.hook_pattern", "5"),
    ),
    Case(
        "API",
        "yes-bias sweep_conditions(fractions=[1.5])",
        lambda env: _yesbias().sweep_conditions("quarters", fractions=[1.5]),
        ("fraction", "1.5"),
    ),
    Case(
        "API",
        "yes-bias sweep_conditions(image_alpha=-1)",
        lambda env: _yesbias().sweep_conditions("quarters", image_alpha=-1),
        ("alpha", "-1"),
    ),
    Case(
        "API",
        "yes-bias run_sweep(max_new_tokens=0)",
        lambda env: _sweep(env, max_new_tokens=0),
        ("max_new_tokens", "0"),
    ),
    Case(
        "API",
        "counting run with n=0",
        lambda env: _counting(env, n=0),
        ("n and max_new_tokens", "n=0"),
    ),
    Case(
        "API",
        "counting run with max_samples=-5",
        lambda env: _counting(env, max_samples=-5),
        ("max_samples", "-5"),
    ),
    # --- images: the one decoding path
    Case(
        "images",
        "int32 array with value 300",
        lambda env: _image(np.full((4, 4), 300, dtype=np.int32)),
        ("int32", "300", "outside 0..255"),
    ),
    Case(
        "images",
        "negative int8 array",
        lambda env: _image(np.full((4, 4), -5, dtype=np.int8)),
        ("int8", "-5"),
    ),
    Case(
        "images",
        "float array holding NaN",
        lambda env: _image(np.full((4, 4, 3), np.nan, dtype=np.float32)),
        ("NaN",),
    ),
    Case(
        "images",
        "float array above 255",
        lambda env: _image(np.full((4, 4), 300.0)),
        ("300",),
    ),
    Case("images", "0x0 array", lambda env: _image(np.zeros((0, 0), np.uint8)), ("empty",)),
    Case(
        "images",
        "array of shape [4, 4, 2]",
        lambda env: _image(np.zeros((4, 4, 2), np.uint8)),
        ("(4, 4, 2)",),
    ),
    Case("images", "truncated PNG file", _truncated_png, ("truncated.png",)),
    Case(
        "images",
        "missing image file",
        lambda env: _image(env.root / "nope.png"),
        ("nope.png", "not found"),
    ),
    Case("images", "decompression bomb (20000 x 20000 PNG)", _bomb, ("bomb.png",)),
    Case("images", "an int as an image", lambda env: _image(7), ("int",)),
    # --- loaders: benchmark files come from the internet
    Case(
        "loaders",
        "POPE folder that does not exist",
        lambda env: _benchmark("pope", env.root / "no-pope"),
        ("POPE", "no-pope"),
    ),
    Case(
        "loaders",
        "unknown benchmark name",
        lambda env: _benchmark("popee", env.root),
        ("popee", "known"),
    ),
    Case(
        "loaders",
        "annotation image name /etc/passwd (absolute)",
        _load("pope", "pope-abs", "/etc/passwd"),
        ("/etc/passwd", "coco_pope_random.json"),
    ),
    Case(
        "loaders",
        "annotation image name ../../x.png",
        _load("pope", "pope-dotdot", "../../x.png"),
        ("../../x.png", "line 1"),
    ),
    Case(
        "loaders",
        "image symlink pointing out of the dataset folder",
        _pope_symlink,
        ("link.png",),
    ),
    Case(
        "loaders",
        "label 'maybe'",
        _load("pope", "pope-label", "ok.png", label="maybe"),
        ("maybe", "line 1"),
    ),
    Case(
        "loaders",
        "annotation line that is not JSON",
        lambda env: _benchmark(
            "pope", _write(env.folder("pope-json") / "coco_pope_random.json", "{oops\n").parent
        ),
        ("line 1", "coco_pope_random.json"),
    ),
    Case(
        "loaders",
        "annotation record without its label field",
        lambda env: _benchmark(
            "pope",
            _write(
                env.folder("pope-field") / "coco_pope_random.json",
                json.dumps({"question_id": 1, "image": "a.png", "text": "?"}) + "\n",
            ).parent,
        ),
        ("label", "line 1"),
    ),
    Case(
        "loaders",
        "annotation naming an image that is not there",
        _load("pope", "pope-missing", "gone.png"),
        ("gone.png",),
    ),
    Case(
        "metrics",
        "pairing unit missing one of its items",
        _incomplete_unit,
        ("incomplete",),
    ),
    # --- CLI: below, from CLI_BAD_ARGUMENTS
]


CASES += [
    Case("CLI", f"vlm-lens {' '.join(argv)}", cli(*argv), (says,))
    for argv, says in CLI_BAD_ARGUMENTS
]


def _yesbias():
    from vlm_lens.studies import yesbias

    return yesbias


def _nothing_written(folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        raise AssertionError(f"files written before the refusal: {sorted(folder.iterdir())}")


def _sweep(env: Env, **kwargs: Any):
    from vlm_lens.data.yesno import synthetic

    yesbias = _yesbias()
    folder = env.root / "sweep"
    try:
        items = synthetic.generate(1, seed=0)
        conditions = yesbias.sweep_conditions("none")
        return yesbias.run_sweep(env.model, items, conditions, folder, progress=False, **kwargs)
    finally:
        _nothing_written(folder)


def _counting(env: Env, n: int = 1, **kwargs: Any):
    from vlm_lens.studies import counting

    folder = env.root / "counting"
    config = counting.CountingConfig(n=n, size=128, radius=3)
    try:
        return counting.run_counting(
            env.model, config, folder, model_name="m", progress=False, **kwargs
        )
    finally:
        _nothing_written(folder)


def _from_pretrained(path: Any, **kwargs: Any):
    from vlm_lens import HookedVLM

    with contextlib.redirect_stderr(io.StringIO()):
        return HookedVLM.from_pretrained(path, **kwargs)


def _select(**kwargs: Any):
    from vlm_lens.core.attention import select

    return select(lambda t, hook: t, **kwargs)


def _metric(name: str, p: torch.Tensor):
    from vlm_lens import metrics

    return getattr(metrics, name)(p)


def _redistribute(**kwargs: Any):
    from vlm_lens.interventions.patterns import redistribute_pattern

    pattern = torch.full((1, 1, 1, 4), 0.25)
    kinds = torch.tensor([[0, 1, 2, 2]])
    return redistribute_pattern(pattern, kinds, "system", **kwargs)


def _dots(**kwargs: Any):
    from vlm_lens.data import dots

    return dots.generate(**kwargs)


def _shard(text: str):
    from vlm_lens.studies.runlog import Shard

    return Shard.parse(text)


def _layers(spec: Any, n: int):
    from vlm_lens.core.layers import resolve_layers

    return resolve_layers(spec, n)


def _image(value: Any):
    from vlm_lens.data.images import load_image

    return load_image(value)


def _benchmark(name: str, path: Path):
    from vlm_lens.data.yesno import load_benchmark

    return load_benchmark(name, path)


# ----------------------------------------------------------------------------- running


def run_case(case: Case, env: Env) -> tuple[str, str]:
    """`(outcome, message)`: outcome is "error", "warning", "exit N", "SILENT" or "UNCLEAR"."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            case.run(env)
        except CLIRefused as refused:
            outcome, lines = refused.args
            message = " | ".join(lines)
            if len(lines) != 1:
                outcome = "UNCLEAR"  # the CLI promises one line
        except Exception as err:
            outcome, message = "error", f"{type(err).__name__}: {' '.join(str(err).split())}"
        else:
            said = [
                str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)
            ]
            if not said:
                return "SILENT", ""
            outcome, message = "warning", " ".join(" ".join(said).split())
    if not all(word.lower() in message.lower() for word in case.says):
        return "UNCLEAR", message
    return outcome, message


def table(env: Env, cases: list[Case] = CASES) -> list[tuple[int, Case, str, str]]:
    return [(i, case, *run_case(case, env)) for i, case in enumerate(cases, 1)]


def markdown(rows: list[tuple[int, Case, str, str]], width: int = 220) -> str:
    lines = ["| # | area | bad input | outcome | message |", "|---|---|---|---|---|"]
    for i, case, outcome, message in rows:
        text = message if len(message) <= width else message[: width - 3] + "..."
        text = text.replace("|", "\\|")
        lines.append(f"| {i} | {case.area} | {case.what} | {outcome} | {text} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="vlm_lens_bad_inputs_") as tmp:
        rows = table(Env(Path(tmp)))
    print(markdown(rows))
    bad = [r for r in rows if r[2] in ("SILENT", "UNCLEAR")]
    print(f"\n{len(rows)} bad inputs, {len(bad)} silent or unclear", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
