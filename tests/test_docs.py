"""The documentation site builds offline with warnings as errors, and holds together.

One `mkdocs build --strict` (what the README says) into a temporary folder, with the studies
on a handful of samples (`VLM_LENS_DOCS_QUICK=1`: this checks the pages, not the numbers) and
the notebooks executed once for the session (shared with tests/test_notebooks.py). Then every
page's internal links and resources must resolve, nothing may load from the network, and,
where Chromium is installed (CI installs it), the main pages must open without a console
message.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from scripts.docs_site import NOTEBOOKS, ROOT
from vlm_lens.adapters import SUPPORTED

pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")

# Attributes that name another file of the site (a link, or a resource the page loads).
LINKING = {"a": "href", "link": "href", "script": "src", "img": "src", "iframe": "src"}
LOADING = {"link", "script", "img", "iframe"}


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []  # (tag, url)
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        url = values.get(LINKING.get(tag, ""))
        if url is not None:
            self.refs.append((tag, url))


def _parse(page: Path) -> _Refs:
    parser = _Refs()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def broken_links(site: Path) -> list[str]:
    """Internal links and resources of every page of `site` that do not resolve (a missing
    file, or a missing #anchor on a site page), and every resource loaded from the network."""
    pages = {p: _parse(p) for p in site.rglob("*.html")}
    problems = []
    for page, parsed in pages.items():
        if page == site / "404.html":  # a web server's error page: its links are root-absolute
            continue
        where = page.relative_to(site)
        for tag, url in parsed.refs:
            parts = urlsplit(url)
            if parts.scheme in ("http", "https") or url.startswith("//"):
                if tag in LOADING:
                    problems.append(f"{where}: <{tag}> loads {url} from the network")
                continue
            if parts.scheme or not url:
                # mailto:, data:, javascript:, and mkdocs-jupyter's empty MathJax <script src="">
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                problems.append(f"{where}: <{tag}> {url} -> missing {target}")
            elif parts.fragment and target in pages and parts.fragment not in pages[target].ids:
                problems.append(f"{where}: <{tag}> {url} -> no #{parts.fragment} there")
    return problems


def _text(page: Path) -> str:
    """The page's text without its tags (highlighted code is split into many spans)."""
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))


def console_messages(page: Path, chromium: str) -> list[str]:
    """What `page` writes to the browser console while it loads (headless Chromium)."""
    proc = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=3000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture(scope="module")
def site(tmp_path_factory, executed_notebook) -> Path:
    tmp = tmp_path_factory.mktemp("docs")
    notebooks = tmp / "notebooks"
    notebooks.mkdir()
    for path in NOTEBOOKS:
        shutil.copyfile(executed_notebook(path), notebooks / path.name)
    env = {
        **os.environ,
        "VLM_LENS_DOCS_BUILD": str(tmp / "generated"),
        "VLM_LENS_DOCS_NOTEBOOKS": str(notebooks),
        "VLM_LENS_DOCS_QUICK": "1",
        "NO_MKDOCS_2_WARNING": "1",
    }
    env.pop("VLM_LENS_DOCS_REUSE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp / "site"


def test_docs_build_strict_with_every_page(site):
    expected = [
        "index.html",
        "getting-started.html",
        "transformerlens.html",
        "studies/counting.html",
        "studies/yesbias.html",
        "reference/hook-points.html",
        "reference/api.html",
        "benchmarks.html",
        *(f"notebooks/{p.stem}.html" for p in NOTEBOOKS),
    ]
    assert [p for p in expected if not (site / p).is_file()] == []
    hooks = (site / "reference/hook-points.html").read_text()
    assert all(f'id="{arch}"' in hooks for arch in SUPPORTED)
    assert "blocks.{L}.attn.hook_pattern" in hooks and "[batch, head, pos, pos]" in hooks
    # The README's sections are included, not copied: the quick tour's code is on its page.
    assert "HookedVLM.from_pretrained(zoo.organism())" in _text(site / "getting-started.html")
    assert "Benchmark results" in _text(site / "benchmarks.html")
    assert "model.prepare(images=..., prompt=...)" in _text(site / "transformerlens.html")


def test_docs_study_pages_hold_their_reports(site):
    for study in ("counting", "yesbias"):
        page = (site / f"studies/{study}.html").read_text()
        assert "What the command printed" in page
        (src,) = re.findall(r'<iframe class="vlm-report" src="([^"]+)"', page)
        report = (site / "studies" / src).resolve().read_text()
        assert "plotly" in report and "organism" in report  # a report of the organism's run


def test_docs_notebooks_rendered_with_outputs(site):
    page = _text(site / "notebooks/01_quickstart.html")
    assert "max |change in logits|:" in page  # a printed output, not only the source
    assert re.search(r"answer '\d+' for \d+ dots", page)
    # plotly figures as offline HTML (the kernel emits plotly's JSON mimetype only)
    counting = (site / "notebooks/02_counting.html").read_text()
    assert counting.count('class="plotly-graph-div"') >= 5
    assert (site / "notebooks/plotly.min.js").is_file()


def test_docs_links_resolve_offline(site):
    assert broken_links(site) == []


def test_link_checker_catches_a_missing_target(tmp_path):
    (tmp_path / "a.html").write_text(
        '<a href="b.html#x">b</a><a href="gone.html">g</a>'
        '<script src="https://cdn.example/x.js"></script><a href="https://example.org">ok</a>'
    )
    (tmp_path / "b.html").write_text('<h1 id="y">b</h1>')
    assert broken_links(tmp_path) == [
        "a.html: <a> b.html#x -> no #x there",
        f"a.html: <a> gone.html -> missing {tmp_path / 'gone.html'}",
        "a.html: <script> loads https://cdn.example/x.js from the network",
    ]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium on this machine")
def test_docs_pages_open_without_console_messages(site):
    pages = ["index.html", "studies/counting.html", "notebooks/06_tl_analysis.html"]
    messages = {p: console_messages(site / p, shutil.which("chromium")) for p in pages}
    assert messages == {p: [] for p in pages}
