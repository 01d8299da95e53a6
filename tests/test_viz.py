"""`vlm_lens.viz.attention_heads` renders in a browser with no network and shows the tokens.

Headless Chromium opens the saved page with every host unresolvable and a proxy to nowhere;
the DOM it builds must hold circuitsvis's rendered views (so its inlined bundle ran), the
labelled tokens as text (image tokens `<img0 r0c0>`, special tokens) and the image grid. A
control page that loads circuitsvis from its CDN renders nothing under the same settings,
which shows the network really is off. Skipped only where Chromium is not installed (CI
installs it).

Not for: what the views mean (tests/test_tl_analysis.py checks the numbers they draw).
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlm_lens import HookedVLM, viz

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)


def offline_dom(page: Path, profile: Path) -> str:
    """The DOM Chromium builds for `page` with no network at all."""
    out = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=http://127.0.0.1:9",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


VOID = {"br", "img", "hr", "input", "meta", "link", "wbr", "col", "area", "base", "source"}


class _Text(HTMLParser):
    """Text outside scripts, and the text inside the element whose id starts with `inside`
    (a line break as "\n")."""

    def __init__(self, inside: str):
        super().__init__()
        self.inside, self.depth, self.in_script = inside, 0, False
        self.text: list[str] = []
        self.inner: list[str] = []
        self.tags: dict[str, int] = {}

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.in_script = tag == "script"
        if tag in VOID:
            if tag == "br":
                self.handle_data("\n")
            return
        if self.depth:
            self.depth += 1
        elif dict(attrs).get("id", "").startswith(self.inside):
            self.depth = 1

    def handle_endtag(self, tag):
        self.in_script = False
        if self.depth and tag not in VOID:
            self.depth -= 1

    def handle_data(self, data):
        if not self.in_script:
            self.text.append(data)
            if self.depth:
                self.inner.append(data)


def parse(dom: str, inside: str) -> _Text:
    parser = _Text(inside)
    parser.feed(dom)
    return parser


@pytest.fixture(scope="module")
def run(tiny_ckpt):
    model = HookedVLM.from_pretrained(tiny_ckpt("qwen3_vl"))
    arr = np.full((64, 64), 255, dtype=np.uint8)
    arr[10:16, 20:26] = 0
    inputs = model.prepare(images=[Image.fromarray(arr).convert("RGB")], prompt="How many dots?")
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=lambda n: n.endswith("hook_pattern"))
    return model, inputs, cache


def test_the_page_is_self_contained(run, tmp_path):
    model, inputs, cache = run
    view = viz.attention_heads(model, cache, -1)
    page = view.save(tmp_path / "attention.html")
    text = page.read_text()
    assert "unpkg.com" not in text and "<script src" not in text
    assert text.count("var CircuitsVis") == 1  # the bundle once, for both circuitsvis views
    assert view._repr_html_() in text  # what Jupyter shows is the page's body


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_offline_chromium_renders_the_heads_the_tokens_and_the_image_grid(run, tmp_path):
    model, inputs, cache = run
    view = viz.attention_heads(model, cache, -1)
    dom = offline_dom(view.save(tmp_path / "attention.html"), tmp_path / "profile")
    parsed = parse(dom, "vlm-lens-coloredtokens")
    text = "".join(parsed.text)
    assert "Head Selector" in text and "Zoomed" in text  # circuitsvis's AttentionHeads ran
    assert parsed.tags.get("canvas", 0) >= model.cfg.n_heads + 1  # head thumbnails + zoom
    labels = model.to_str_tokens(inputs)
    # circuitsvis shows a space as a no-break space, a newline as one followed by a line break
    shown = "".join(parsed.inner).replace("\xa0\n", "\n").replace("\xa0", " ")
    assert shown == "".join(labels)  # every token, as text, in order
    assert "<img0 r0c0>" in shown and "<|vision_start|>" in shown and "<|im_start|>" in shown
    (span,) = inputs.segments.samples[0].images
    h, w = span.grid
    assert parsed.tags.get("td", 0) == h * w * (model.cfg.n_heads + 1)  # mean + each head
    assert f"image 0 ({h} x {w} tokens)" in text


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_control_a_cdn_page_renders_nothing_offline(run, tmp_path):
    """circuitsvis's own CDN page under the same settings: the network is really off."""
    import circuitsvis.attention

    model, inputs, cache = run
    rendered = circuitsvis.attention.attention_heads(
        cache["pattern", -1][0], model.to_str_tokens(inputs)
    )
    page = tmp_path / "cdn.html"
    page.write_text(f"<html><body>{rendered.cdn_src}</body></html>")
    assert "unpkg.com" in page.read_text()
    dom = offline_dom(page, tmp_path / "profile")
    assert "Head Selector" not in "".join(parse(dom, "none").text)


def test_clear_errors(run):
    model, inputs, cache = run
    with pytest.raises(IndexError, match="out of range"):
        viz.attention_heads(model, cache, -1, query=10_000)
    with pytest.raises(ValueError, match="run_with_cache"):
        viz.attention_heads(model, cache.__class__(dict(cache.cache_dict), model), 0)
    empty = cache.__class__({}, model, segments=cache.segments, tokens=cache.tokens)
    with pytest.raises(KeyError):
        viz.attention_heads(model, empty, 0)
