"""The report's layout at scale (issue 27): index.html holds the summary and the table, the component panels'
data live in report/components/ as script files of one build, loaded on demand from file://.

Checks: every chunk and token file holds what the model has, of the page's build; a rebuild replaces the whole
directory (no chunk of an older build left beside the new ones); a write that fails midway leaves the previous
report whole; and in headless Chromium, a panel loads only its own chunk, a missing file or a file of another
build says so in the panel instead of showing wrong data.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from spd.report import ReportOptions, build_report, gather_report
from spd.report import render as report_render
from spd.report.render import COMPONENTS_DIR, read_sidecar, render_report, write_report
from testkit.report_support import make_synthetic_run


def _meta(page: Path) -> dict:
    match = re.search(r'<script type="application/json" id="report-meta">(.*?)</script>', page.read_text(), re.S)
    assert match is not None
    return json.loads(match.group(1))


def _files(report_dir: Path) -> dict[str, tuple[str, str, object]]:
    return {p.name: read_sidecar(p) for p in sorted((report_dir / COMPONENTS_DIR).iterdir())}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    return make_synthetic_run(tmp_path_factory.mktemp("scale") / "scale", n_components=60, n_modules=3)


def test_panels_live_in_component_files_of_the_pages_build(run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_render, "TOKENS_PER_FILE", 150)  # several token files
    options = ReportOptions(chunk_size=7)
    model = gather_report(run.root, run.status, options)
    page = write_report(model, run.root)
    report_dir = page.parent
    assert sorted(p.name for p in report_dir.iterdir()) == ["components", "index.html", "stale.js"]
    meta = _meta(page)
    files = _files(report_dir)
    keys = [row[0] for row in model["rows"]]
    n_chunks, n_token_files = -(-len(keys) // 7), -(-len(model["tokens"]) // 150)
    assert (meta["n_chunks"], meta["token_files"], meta["components"]) == (n_chunks, n_token_files, "components")
    assert n_token_files > 1
    assert sorted(files) == sorted(
        [f"chunk-{n}.js" for n in range(n_chunks)] + [f"tokens-{k}.js" for k in range(n_token_files)]
    )
    assert {build for build, _, _ in files.values()} == {meta["build"]}
    assert all(name == f"{got}.js" for name, (_, got, _) in files.items())
    details = [d for n in range(n_chunks) for d in files[f"chunk-{n}.js"][2]]
    assert details == [model["details"][k] for k in keys]
    tokens = {t: s for k in range(n_token_files) for t, s in files[f"tokens-{k}.js"][2].items()}
    assert tokens == model["tokens"]

    # index.html holds no panel data: no packed chunk, no example token text
    text = page.read_text()
    assert 'SPD_REPORT_CHUNK("' not in text and 'id="chunk-' not in text and 'id="tokens-data"' not in text
    # the same data give the same build id; other data another
    assert render_report(model).build == meta["build"]
    model["details"][keys[0]]["key"] += "x"
    assert render_report(model).build != meta["build"]


def test_a_rebuild_replaces_every_component_file(run) -> None:
    build_report(run.root, run.status, ReportOptions(chunk_size=5))
    first = _meta(run.root / "report/index.html")
    page = build_report(run.root, run.status, ReportOptions(chunk_size=40))
    meta = _meta(page)
    assert meta["build"] != first["build"] and first["n_chunks"] > meta["n_chunks"] == 2
    files = _files(page.parent)
    assert sorted(n for n in files if n.startswith("chunk-")) == ["chunk-0.js", "chunk-1.js"]  # no older chunk left
    assert {build for build, _, _ in files.values()} == {meta["build"]}
    assert not [p for p in page.parent.iterdir() if p.name.startswith(".")]  # no temp file or directory left


def test_a_failed_write_leaves_the_previous_report_whole(run, monkeypatch: pytest.MonkeyPatch) -> None:
    page = build_report(run.root, run.status, ReportOptions(chunk_size=10))
    before = {p.relative_to(page.parent): p.read_bytes() for p in page.parent.rglob("*") if p.is_file()}
    written = []

    def failing_write(path: Path, data: bytes) -> None:
        if len(written) == 3:
            raise OSError(28, "No space left on device")
        written.append(path)
        path.write_bytes(data)

    monkeypatch.setattr(report_render, "write_file", failing_write)
    with pytest.raises(OSError, match="No space left"):
        build_report(run.root, run.status, ReportOptions(chunk_size=4))
    after = {p.relative_to(page.parent): p.read_bytes() for p in page.parent.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in page.parent.iterdir() if p.name.startswith(".")]


def test_panels_load_their_chunk_from_file_urls_and_refuse_other_builds(run, tmp_path: Path, browser) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    model = gather_report(run.root, run.status, ReportOptions(chunk_size=8))
    page = write_report(model, tmp_path / "a")
    other = write_report(gather_report(run.root, run.status, ReportOptions(chunk_size=9)), tmp_path / "b")
    keys = [row[0] for row in model["rows"]]
    assert len(keys) > 3 * 8
    browser.get(page.as_uri())
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))

    def open_panel(key: str) -> str:
        browser.execute_script(
            "const p = document.getElementById('panel'); p.replaceChildren(); delete p.dataset.key;"
            "location.hash = '#component=' + encodeURIComponent(arguments[0]);",
            key,
        )
        wait.until(
            lambda d: d.execute_script(
                "const p = document.getElementById('panel');"
                "return p.dataset.key === arguments[0] || p.textContent.startsWith('cannot read');",
                key,
            )
        )
        return browser.find_element("id", "panel").text

    # every script the page adds to load a file, recorded by name
    browser.execute_script(
        "window.loadedFiles = []; new MutationObserver((ms) => ms.forEach((m) => m.addedNodes.forEach((n) => {"
        "  if (n.src) window.loadedFiles.push(n.src.split('/').slice(-2).join('/')); })))"
        ".observe(document.head, { childList: true });"
    )

    def loaded() -> list[str]:
        return browser.execute_script("return window.loadedFiles")

    assert loaded() == [] and not browser.find_elements("css selector", "script[src*=components]")
    text = open_panel(keys[9])  # chunk 1
    assert keys[9] in text and "cannot read" not in text
    assert sorted(loaded()) == ["components/chunk-1.js", "components/tokens-0.js"]
    open_panel(keys[10])  # the same chunk: nothing loaded again
    assert sorted(loaded()) == ["components/chunk-1.js", "components/tokens-0.js"]
    assert not browser.find_elements("css selector", "head script[src]")  # the loaded scripts are removed

    # a chunk file of another build (a rebuild swapped components/ under the open page) is refused
    components = page.parent / COMPONENTS_DIR
    shutil.copy(other.parent / COMPONENTS_DIR / "chunk-2.js", components / "chunk-2.js")
    text = open_panel(keys[16])
    assert "cannot read this component's data" in text and "from another build of the report" in text
    assert "reload the page" in text
    # a missing chunk file says which, and what to do
    (components / "chunk-3.js").unlink()
    text = open_panel(keys[24])
    assert "cannot read this component's data: missing file components/chunk-3.js: rebuild the report" in text
    # a good chunk still opens after those failures
    text = open_panel(keys[0])
    assert keys[0] in text and "cannot read" not in text
    # failures are not cached: with the files of this build back, both components open
    write_report(model, tmp_path / "a")  # the same data rebuilt: the same build id, every file back
    assert keys[24] in open_panel(keys[24]) and "cannot read" not in open_panel(keys[16])
