"""Every figure in a saved notebook shows where no JavaScript runs: GitHub, nbviewer, an exported HTML page offline.

Each notebook (nbs/ and tutorials/) is converted the way nbconvert exports it and opened in a real browser with
JavaScript off and the network cut, as a static viewer shows it. Every figure output (plotly JSON, or a widget whose
static copy holds plotly figures) must show as a drawn image, and no plot may leave an empty box. A second test opens
the HTML form of a figure saved without an image, offline with JavaScript on: the message must show, not a gap.
"""
import json, re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb")) + sorted((ROOT / "tutorials").glob("[0-9]*.ipynb"))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium), as .ci/run does")
MAX_BYTES = 1_000_000

PLOTLY = "application/vnd.plotly.v1+json"
WIDGET = "application/vnd.jupyter.widget-view+json"


def _text(v) -> str: return "".join(v) if isinstance(v, list) else (v or "")


def expected_figures(nb: dict) -> int:
    "How many figures the notebook's outputs hold: plotly figures shown directly, and those inside widgets' static copies"
    n = 0
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            d = o.get("data", {})
            if WIDGET in d: n += _text(d.get("text/html")).count('class="plotly-graph-div"')
            elif PLOTLY in d: n += 1
    return n


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _offline_page(browser, javascript: bool):
    ctx = browser.new_context(java_script_enabled=javascript, viewport={"width": 1200, "height": 900})
    ctx.route(re.compile(r"^(https?|wss?)://.*"), lambda r: r.abort())   # a static viewer's page, with no internet
    return ctx, ctx.new_page()


SHOWN = """() => {
  const out = [...document.querySelectorAll('.jp-OutputArea-output img')];
  const drawn = out.filter(i => i.complete && i.naturalWidth > 100 && i.naturalHeight > 100
                                 && i.getBoundingClientRect().width > 100 && i.getBoundingClientRect().height > 100);
  const gaps = [...document.querySelectorAll('.plotly-graph-div')].filter(d => d.getBoundingClientRect().height > 0
                                 && !d.querySelector('svg, canvas, img'));
  return {drawn: drawn.length, broken: out.length - drawn.length, gaps: gaps.length};
}"""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[f"{p.parent.name}/{p.stem}" for p in NOTEBOOKS])
def test_static_viewer_shows_every_figure(path, browser, tmp_path):
    from nbconvert import HTMLExporter
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size:,} bytes: keep it under 1 MB"
    nb = json.loads(path.read_text())
    want = expected_figures(nb)
    body, _ = HTMLExporter().from_filename(str(path))
    page_file = tmp_path / f"{path.stem}.html"
    page_file.write_text(body)
    ctx, page = _offline_page(browser, javascript=False)
    try:
        page.goto(page_file.as_uri(), wait_until="load", timeout=60_000)
        got = page.evaluate(SHOWN)
    finally:
        ctx.close()
    assert got["gaps"] == 0, f"{path.name}: {got['gaps']} plot(s) left an empty box where no JavaScript runs"
    assert got["broken"] == 0, f"{path.name}: {got['broken']} output image(s) did not draw"
    assert got["drawn"] >= want, (f"{path.name}: {want} figures in its outputs, {got['drawn']} drawn without JavaScript: "
                                  "execute it with dpo_nb.display.static_images() on")


def test_expected_figures_counts_both_kinds():
    nb = {"cells": [{"outputs": [{"data": {PLOTLY: {}, "image/png": "x"}},
                                 {"data": {WIDGET: {}, "text/html": '<div class="plotly-graph-div"></div>' * 2}},
                                 {"data": {"text/plain": "x"}}]}]}
    assert expected_figures(nb) == 3
    assert sum(expected_figures(json.loads(p.read_text())) for p in NOTEBOOKS) >= 10   # the lessons do show figures


def test_offline_figure_without_image_says_why(browser, tmp_path):
    "A figure saved without an image, opened offline with JavaScript on (plotly.js cannot load): a message, no blank box"
    from dpo_nb.display import figure_html, static_images
    from dpo_nb.plots import empty_figure
    static_images(False)
    page_file = tmp_path / "fig.html"
    page_file.write_text("<html><body>" + figure_html(empty_figure("Margins", "nothing yet")) + "<p id='after'>after</p></body></html>")
    ctx, page = _offline_page(browser, javascript=True)
    try:
        page.goto(page_file.as_uri(), wait_until="load", timeout=60_000)
        got = page.evaluate("""() => ({msg: document.querySelector('.dpo-fig-fallback').innerText,
            box: document.querySelector('.plotly-graph-div').getBoundingClientRect().height,
            visible: document.querySelector('.dpo-fig-fallback').getBoundingClientRect().height})""")
    finally:
        ctx.close()
    assert "did not load" in got["msg"] and "Margins" in got["msg"] and got["visible"] > 10
    assert got["box"] == 0


def test_static_images_put_an_image_in_every_form(browser, tmp_path):
    "static_images(True): a figure's bundle carries a PNG, its HTML form an image shown until plotly.js draws; off again after"
    import base64, plotly.io as pio
    from dpo_nb.display import figure_bundle, figure_html, static_images
    from dpo_nb.plots import empty_figure
    fig = empty_figure("Margins", "nothing yet")
    try:
        before = pio.renderers.default
        assert static_images(True) and pio.renderers.default == before   # outside a notebook kernel the renderer is left alone
        b = figure_bundle(fig)
        assert base64.b64decode(b["image/png"])[:8] == b"\x89PNG\r\n\x1a\n" and "text/html" not in b
        page_file = tmp_path / "fig.html"
        page_file.write_text("<html><body>" + figure_html(fig) + "</body></html>")
        ctx, page = _offline_page(browser, javascript=True)
        try:
            page.goto(page_file.as_uri(), wait_until="load", timeout=60_000)
            got = page.evaluate("() => { const i = document.querySelector('.dpo-fig-fallback img');"
                                " return {w: i.naturalWidth, h: i.getBoundingClientRect().height, alt: i.alt}; }")
        finally:
            ctx.close()
        assert got["w"] > 100 and got["h"] > 100 and got["alt"] == "Margins"
    finally:
        static_images(False)
    assert pio.renderers.default == before and "text/html" in figure_bundle(fig)


def test_figure_html_draws_where_a_frontend_inserts_it(browser, tmp_path):
    "Inserted into a live page the way JupyterLab renders trusted HTML (innerHTML, then each script re-made), it still draws"
    import plotly
    from dpo_nb.display import figure_html, static_images
    from dpo_nb.plots import empty_figure
    static_images(False)
    frag = figure_html(empty_figure("Margins", "nothing yet")) + figure_html(empty_figure("Rewards", "nothing yet"))
    page_file = tmp_path / "live.html"
    page_file.write_text("<html><body><div id='out'></div><script>const FRAG = " + json.dumps(frag).replace("</", "<\\/") + """;
      const out = document.getElementById('out'); out.innerHTML = FRAG;
      for (const old of out.querySelectorAll('script')) {   // what a frontend does: scripts set by innerHTML never run
        const s = document.createElement('script'); s.textContent = old.textContent; old.replaceWith(s); }
      </script></body></html>""")
    plotlyjs = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    ctx.route("https://cdn.plot.ly/**", lambda r: r.fulfill(path=str(plotlyjs), content_type="application/javascript"))
    ctx.route(re.compile(r"^https?://(?!cdn\.plot\.ly).*"), lambda r: r.abort())
    page = ctx.new_page()
    try:
        page.goto(page_file.as_uri(), wait_until="load", timeout=60_000)
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length == 2", timeout=60_000)
        got = page.evaluate("""() => ({fallbacks: document.querySelectorAll('.dpo-fig-fallback').length,
            loaders: document.querySelectorAll('script[data-dpo-plotly]').length})""")
    finally:
        ctx.close()
    assert got == {"fallbacks": 0, "loaders": 1}     # both drawn, each fallback gone, plotly.js loaded once
