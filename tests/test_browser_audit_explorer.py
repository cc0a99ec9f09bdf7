"""The audit explorer in a real browser: JupyterLab on 127.0.0.1 with a token, Debian's chromium driven by playwright.

The fixture notebook audits 40 toy pairs and shows an `AuditExplorer` (widget mode: ipywidgets and plotly
FigureWidgets). The test runs it, then opens two other pairs through the page, one from the table (a row of the list)
and one by clicking its point in the CHES scatter, and asserts from the DOM that the pair view, its tokens coloured by
the reference's log-probs, and the scatter's star moved to that pair. The JupyterLab server and page setup are
tests/test_browser_widgets.py's. Screenshots go to test-artifacts/browser_audit_explorer/ (git-ignored).
"""
from __future__ import annotations

import math, re, shutil, time
from pathlib import Path

import pytest

from test_browser_widgets import CHROMIUM, CHROMIUM_ARGS, Lab, _wait_ready, progress_js, run_all

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "audit_explorer_browser.ipynb"
ARTIFACTS = ROOT / "test-artifacts" / "browser_audit_explorer"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium), as .ci/run does")

_SCATTER = """(root) => [...root.querySelectorAll('.js-plotly-plot')].find(p => p.layout && p.layout.title &&
                                                                 String(p.layout.title.text || '').startsWith('CHES'))"""

_PROGRESS_JS = progress_js("""(() => { const root = document.querySelector('.dpo-audit-explorer');
  const sc = root && (""" + _SCATTER + """)(root);
  return root && root.querySelector('.dpo-audit-pair[data-pair]') && root.querySelector('.dpo-tokens .dpo-tok[data-ref-logp]')
         && sc && sc.data && sc.data.length >= 2 && root.querySelectorAll('.dpo-audit-list option').length >= 3
         && [...root.querySelectorAll('.js-plotly-plot')].some(p => p !== sc && p.data && p.data.length >= 3
                                                                && String(p.layout.title.text || '').startsWith('Length bias')); })()""")

_STATE_JS = """() => {
  const root = document.querySelector('.dpo-audit-explorer');
  const tok = root.querySelector('.dpo-tokens');
  const spans = [...tok.querySelectorAll('.dpo-tok[data-ref-logp]')];
  const sc = (""" + _SCATTER + """)(root);
  const star = sc.data[sc.data.length - 1];
  return {pair: root.querySelector('.dpo-audit-pair').dataset.pair, tokens_pair: tok.dataset.pair, colour: tok.dataset.colour,
          ref: spans.map(s => Number(s.dataset.refLogp)), backgrounds: spans.map(s => s.style.background),
          star: {name: star.name, x: Array.from(star.x || []).map(Number), y: Array.from(star.y || []).map(Number)},
          options: [...root.querySelectorAll('.dpo-audit-list option')].map(o => o.textContent)};
}"""

_POINTS_JS = """() => {
  const root = document.querySelector('.dpo-audit-explorer');
  const sc = (""" + _SCATTER + """)(root);
  sc.scrollIntoView({block: 'center'});
  const xa = sc._fullLayout.xaxis, ya = sc._fullLayout.yaxis, box = sc.getBoundingClientRect(), pts = [];
  sc.data.forEach(t => { if (t.name === 'selected pair') return;
    const xs = Array.from(t.x || []), ys = Array.from(t.y || []);
    xs.forEach((x, j) => pts.push({pid: Number(t.customdata[j][0]), x: Number(x), y: Number(ys[j]),
                                   px: box.left + xa._offset + xa.l2p(x), py: box.top + ya._offset + ya.l2p(ys[j])})); });
  return pts;
}"""


def _run_all(page, lab, timeout: float = 150):
    "Run every cell, then wait for the explorer with its tokens and scatter"
    return run_all(page, lab, _PROGRESS_JS, "the audit explorer", timeout)


def _wait_for_pair(page, pid: int, timeout: float = 60):
    page.wait_for_function("""(pid) => {
      const root = document.querySelector('.dpo-audit-explorer');
      const head = root.querySelector('.dpo-audit-pair'), tok = root.querySelector('.dpo-tokens');
      return head && tok && head.dataset.pair === String(pid) && tok.dataset.pair === String(pid) && !!tok.querySelector('.dpo-tok[data-ref-logp]');
    }""", arg=pid, timeout=timeout * 1000)
    page.wait_for_timeout(300)   # (the star's update follows the pair view's in the same message batch; let it draw)


def _row(option: str) -> tuple:
    "pair id and Δref (log π_ref(chosen) − log π_ref(rejected)) from one row of the list"
    cells = [c.strip() for c in option.replace("\u00a0", " ").split("│")]
    return int(cells[0]), float(cells[2])


def _assert_opened(before: dict, after: dict, pid: int, x: float, y: float | None = None):
    assert after["pair"] == after["tokens_pair"] == str(pid) != before["pair"]
    assert after["colour"] == "ref_logp" and after["ref"] and all(math.isfinite(v) and v <= 0 for v in after["ref"])
    assert all(b.startswith("rgba(166, 54, 3") for b in after["backgrounds"]), after["backgrounds"][:3]
    assert after["ref"] != before["ref"]                                    # another pair's tokens, scored by the reference
    assert after["star"]["name"] == "selected pair" and len(after["star"]["x"]) == 1
    assert abs(after["star"]["x"][0] - x) < 0.01 and (y is None or abs(after["star"]["y"][0] - y) < 1e-6 * max(1, abs(y)))


def test_audit_explorer_in_jupyterlab(tmp_path):
    from playwright.sync_api import sync_playwright
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    lab = Lab(tmp_path)
    shutil.copy(FIXTURE, lab.root / FIXTURE.name)
    try:
        lab.wait_up()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1400})
                page.set_default_timeout(60_000)
                page.goto(lab.url(f"/lab/tree/{FIXTURE.name}"), wait_until="domcontentloaded", timeout=90_000)
                _wait_ready(page)
                _run_all(page, lab)
                root = page.locator(".dpo-audit-explorer")
                root.scroll_into_view_if_needed()
                a = page.evaluate(_STATE_JS)
                page.screenshot(path=str(ARTIFACTS / "1-explorer.png"), full_page=True)

                # 1. a row of the table
                rows = [_row(o) for o in a["options"]]
                target = next(i for i, (pid, _) in enumerate(rows) if str(pid) != a["pair"] and i > 0)
                root.locator(".dpo-audit-list select").select_option(index=target)
                _wait_for_pair(page, rows[target][0])
                b = page.evaluate(_STATE_JS)
                page.screenshot(path=str(ARTIFACTS / "2-picked-from-table.png"), full_page=True)
                _assert_opened(a, b, rows[target][0], rows[target][1])

                # 2. a point of the scatter: the one farthest from any other (so the click is on it alone)
                pts = page.evaluate(_POINTS_JS)
                far = lambda p: min(math.hypot(p["px"] - q["px"], p["py"] - q["py"]) for q in pts if q is not p)
                pt = max((p for p in pts if str(p["pid"]) not in (b["pair"], a["pair"])), key=far)
                page.mouse.move(pt["px"] - 6, pt["py"] - 6)
                page.mouse.move(pt["px"], pt["py"], steps=4)   # hover first: plotly reports the hovered point on click
                page.wait_for_timeout(300)
                page.mouse.down(); page.mouse.up()
                _wait_for_pair(page, pt["pid"])
                c = page.evaluate(_STATE_JS)
                page.screenshot(path=str(ARTIFACTS / "3-clicked-in-scatter.png"), full_page=True)
                _assert_opened(b, c, pt["pid"], pt["x"], pt["y"])
            finally:
                browser.close()
    except Exception:
        (ARTIFACTS / "lab.log").write_text(lab.logs())
        raise
    finally:
        lab.stop()
