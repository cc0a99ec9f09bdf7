"""The pair inspector in a real browser: JupyterLab on 127.0.0.1 with a token, Debian's chromium driven by playwright.

The fixture notebook trains the toy task for a few steps and shows a `PairInspector` (widget mode: ipywidgets and a
plotly FigureWidget). The test runs it, picks another pair through the page (the ranked list, then the pair-id box)
and asserts from the DOM that the plotted trajectory and the coloured tokens changed. Screenshots go to
test-artifacts/browser_widgets/ (git-ignored). Skipped only where /usr/bin/chromium is absent.
"""
from __future__ import annotations

import json, os, re, secrets, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "widgets_browser.ipynb"
ARTIFACTS = ROOT / "test-artifacts" / "browser_widgets"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium), as .ci/run does")

# --- JupyterLab -------------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(settings: Path):
    "Lab settings for a quiet, deterministic session: no news, no update checks, no autosave, every cell rendered"
    for rel, body in {"@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
                      "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
                      "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"}}.items():
        f = settings / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(body))


class Lab:
    "A JupyterLab server in its own process group, serving a throwaway copy of the fixture"
    def __init__(self, tmp: Path):
        self.tmp, self.port, self.token = tmp, _free_port(), secrets.token_hex(16)
        self.root = tmp / "root"
        self.root.mkdir()
        shutil.copy(FIXTURE, self.root / FIXTURE.name)
        for d in ("settings", "workspaces", "runtime", "config", "data", "ipython"): (tmp / d).mkdir()
        _write_settings(tmp / "settings")
        self.log = open(tmp / "lab.log", "w")
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp / "config"),
               "JUPYTER_DATA_DIR": str(tmp / "data"), "IPYTHONDIR": str(tmp / "ipython"), "JUPYTER_PLATFORM_DIRS": "1",
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("DPO_NB_WIDGETS", None)
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={self.root}", "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               f"--LabApp.user_settings_dir={tmp / 'settings'}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}"]
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def url(self, path: str) -> str: return f"http://127.0.0.1:{self.port}{path}?token={self.token}"

    def wait_up(self, timeout: float = 90):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None: raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url("/api/status"), timeout=5) as r:
                    if r.status == 200: return
            except OSError: pass
            time.sleep(0.5)
        raise TimeoutError(f"JupyterLab did not answer on port {self.port} within {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        self.log.flush()
        return (self.tmp / "lab.log").read_text()[-4000:]

    def stop(self):
        "Stop the server and its kernels (the whole process group we started)"
        if self.proc.poll() is None:
            try: os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError: pass
            try: self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try: os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError: pass
                self.proc.wait(timeout=10)
        try: os.killpg(self.proc.pid, signal.SIGKILL)  # kernels left in the group, if any
        except (ProcessLookupError, PermissionError): pass
        self.log.close()

# --- the page ---------------------------------------------------------------------------------------------------------

_READY_JS = """() => {
  const app = window.jupyterapp; if (!app) return false;
  const w = app.shell.currentWidget;
  if (!w || !w.context || !w.sessionContext || !w.content) return false;
  const s = w.sessionContext, k = s.session && s.session.kernel;
  return w.context.isReady && s.isReady && !!k && k.connectionStatus === 'connected' && k.status === 'idle';
}"""

def progress_js(ready: str) -> str:
    "JS that reports the cells' execution counts, their errors, the kernel's status and whether `ready` (a JS expression) holds"
    return r"""() => {
  const w = window.jupyterapp.shell.currentWidget;
  const counts = w.content.widgets.filter(c => c.model.type === 'code').map(c => c.model.executionCount);
  const err = [];
  for (const c of w.content.widgets) {
    if (c.model.type !== 'code') continue;
    const outs = c.model.outputs;
    for (let i = 0; i < outs.length; i++) {
      const o = outs.get(i);
      if (o.type === 'error') { const j = o.toJSON(); err.push(j.ename + ': ' + j.evalue + '\n' + (j.traceback || []).join('\n')); }
    }
  }
  const k = w.sessionContext.session && w.sessionContext.session.kernel;
  return {counts, err, status: k ? k.status : 'none', ready: !!(""" + ready + """)};
}"""


def run_all(page, lab, progress: str, what: str, timeout: float = 150):
    "Run every cell; re-issue the command if nothing started (a command sent too early is dropped); wait until `progress` says ready"
    t0, issued, last, p = time.time(), 0, None, None
    while time.time() - t0 < timeout:
        if issued == 0 or (issued < 3 and time.time() - last > 20 and not any(p["counts"]) and p["status"] == "idle"):
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            issued, last = issued + 1, time.time()
        time.sleep(1.0)
        p = page.evaluate(progress)
        if p["err"]: raise AssertionError("a fixture cell failed:\n" + "\n".join(p["err"])[-3000:])
        if p["ready"] and all(c is not None for c in p["counts"]) and p["status"] == "idle": return p
    raise TimeoutError(f"{what} did not appear within {timeout} s (progress {p}); server log:\n{lab.logs()}")


_PROGRESS_JS = progress_js("""(() => { const root = document.querySelector('.dpo-inspector');
  const plot = root && root.querySelector('.js-plotly-plot');
  return root && root.querySelector('.dpo-tokens .dpo-tok') && plot && plot.data && plot.data.length >= 4; })()""")

_STATE_JS = """() => {
  const root = document.querySelector('.dpo-inspector');
  const tok = root.querySelector('.dpo-tokens');
  const spans = [...tok.querySelectorAll('.dpo-tok:not(.dpo-prompt)')];
  const plot = root.querySelector('.js-plotly-plot');
  return {tokens_pair: tok.dataset.pair, head_pair: root.querySelector('.dpo-head').dataset.pair,
          texts: spans.map(s => s.textContent), colours: spans.map(s => s.style.background), lr: spans.map(s => s.dataset.lr),
          titles: spans.slice(0, 3).map(s => s.title),
          plot_title: (plot.layout.title && plot.layout.title.text) || '',
          traces: plot.data.map(t => ({name: t.name, x: Array.from(t.x || []).map(Number), y: Array.from(t.y || []).map(Number)})),
          list_value: root.querySelector('.widget-select select').value};
}"""


def _wait_ready(page, timeout: float = 120):
    "Wait for the notebook, its session and an idle kernel; reload once if the page never gets there"
    for attempt in range(2):
        try:
            page.wait_for_function(_READY_JS, timeout=timeout * 1000 / 2)
            return
        except Exception:
            if attempt: raise
            page.reload(wait_until="domcontentloaded")


def _run_all(page, lab, timeout: float = 150):
    "Run every cell and wait for the inspector"
    return run_all(page, lab, _PROGRESS_JS, "the inspector", timeout)


def _wait_for_pair(page, pid: int, timeout: float = 60):
    page.wait_for_function("""(pid) => {
      const root = document.querySelector('.dpo-inspector'); if (!root) return false;
      const tok = root.querySelector('.dpo-tokens'), head = root.querySelector('.dpo-head'), plot = root.querySelector('.js-plotly-plot');
      return tok && head && plot && tok.dataset.pair === 'eval:' + pid && head.dataset.pair === 'eval:' + pid &&
             !!tok.querySelector('.dpo-tok') && plot.layout.title && plot.layout.title.text.startsWith('Pair ' + pid + ' ');
    }""", arg=pid, timeout=timeout * 1000)


def _pid(key: str) -> int: return int(key.split(":")[1])


def _assert_changed(a: dict, b: dict):
    assert _pid(a["tokens_pair"]) != _pid(b["tokens_pair"])
    assert b["head_pair"] == b["tokens_pair"]
    assert f"Pair {_pid(b['tokens_pair'])} " in b["plot_title"]
    # the plotted data changed: the margin and reward traces of another pair
    ya = {t["name"]: t["y"] for t in a["traces"]}
    yb = {t["name"]: t["y"] for t in b["traces"]}
    assert set(ya) >= {"r_chosen", "r_rejected", "margin", "gradient weight"}
    assert any(ya[n] != yb[n] for n in ("r_chosen", "r_rejected", "margin")), (ya, yb)
    # the coloured tokens changed: other tokens or other colours, each one coloured by its log-ratio
    assert b["texts"] and (a["texts"] != b["texts"] or a["colours"] != b["colours"])
    assert all(c.startswith("rgba(") for c in b["colours"])
    assert all(re.match(r"-?\d", v) for v in b["lr"]), b["lr"][:5]
    assert "log π − log π_ref" in b["titles"][0]


def test_inspector_in_jupyterlab(tmp_path):
    from playwright.sync_api import sync_playwright
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    lab = Lab(tmp_path)
    try:
        lab.wait_up()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1600})
                page.set_default_timeout(60_000)
                page.goto(lab.url(f"/lab/tree/{FIXTURE.name}"), wait_until="domcontentloaded", timeout=90_000)
                t0 = time.perf_counter()
                _wait_ready(page)
                timing = {"kernel_ready_s": time.perf_counter() - t0}
                t0 = time.perf_counter()
                _run_all(page, lab)
                timing["run_all_s"] = time.perf_counter() - t0
                root = page.locator(".dpo-inspector")
                root.scroll_into_view_if_needed()
                a = page.evaluate(_STATE_JS)
                page.screenshot(path=str(ARTIFACTS / "1-inspector.png"), full_page=True)

                # 1. another pair from the ranked list
                select = root.locator(".widget-select select")
                options = select.locator("option").all_text_contents()
                assert len(options) >= 3, options
                target = next(i for i, o in enumerate(options) if int(re.match(r"#(\d+)", o).group(1)) != _pid(a["tokens_pair"]))
                pid = int(re.match(r"#(\d+)", options[target]).group(1))
                t0 = time.perf_counter()
                select.select_option(index=target)
                _wait_for_pair(page, pid)
                timing["switch_from_list_s"] = time.perf_counter() - t0
                b = page.evaluate(_STATE_JS)
                page.screenshot(path=str(ARTIFACTS / "2-picked-from-list.png"), full_page=True)
                _assert_changed(a, b)

                # 2. another pair by typing its id
                other = next(int(re.match(r"#(\d+)", o).group(1)) for o in options if int(re.match(r"#(\d+)", o).group(1)) not in (pid, _pid(a["tokens_pair"])))
                box = root.locator("input[type=number]")
                box.fill(str(other))
                t0 = time.perf_counter()
                box.press("Enter")
                _wait_for_pair(page, other)
                timing["switch_by_id_s"] = time.perf_counter() - t0
                c = page.evaluate(_STATE_JS)
                page.screenshot(path=str(ARTIFACTS / "3-typed-id.png"), full_page=True)
                _assert_changed(b, c)
                (ARTIFACTS / "timing.json").write_text(json.dumps(timing, indent=1))  # page-side latencies, for the record
            finally:
                browser.close()
    except Exception:
        (ARTIFACTS / "lab.log").write_text(lab.logs())
        raise
    finally:
        lab.stop()


# --- the static copies an exported page shows ---------------------------------------------------------------------------

def test_exported_html_shows_static_copies(tmp_path):
    "nbconvert's HTML of 06b_widgets (no widget state saved) falls back to each widget's static copy: figures drawn, tokens coloured"
    import plotly
    from playwright.sync_api import sync_playwright
    nb = ROOT / "nbs" / "06b_widgets.ipynb"
    live = sum("application/vnd.jupyter.widget-view+json" in o.get("data", {})
               for c in json.loads(nb.read_text())["cells"] for o in c.get("outputs", []))
    assert live >= 8, "the notebook should be committed executed, with its widgets displayed"
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", str(nb), "--output-dir", str(tmp_path)],
                   check=True, capture_output=True, timeout=120)
    page_file = tmp_path / "06b_widgets.html"
    plotlyjs = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"   # the CDN's file, served locally (no network here)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1200})
            page.route("https://cdn.plot.ly/**", lambda r: r.fulfill(path=str(plotlyjs), content_type="application/javascript"))
            page.route(re.compile(r"^https?://(?!cdn\.plot\.ly).*"), lambda r: r.abort())
            page.goto(page_file.as_uri(), wait_until="load", timeout=90_000)
            page.wait_for_function("n => document.querySelectorAll('.dpo-static .js-plotly-plot').length >= n", arg=live, timeout=60_000)
            got = page.evaluate("""() => ({
                apps: document.querySelectorAll('.dpo-static').length,
                plots: [...document.querySelectorAll('.dpo-static .js-plotly-plot')].map(p => p.data.length),
                tokens: document.querySelectorAll('.dpo-static .dpo-tokens .dpo-tok').length,
                widget_views: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length})""")
            page.screenshot(path=str(ARTIFACTS / "4-exported-html.png"))
        finally:
            browser.close()
    assert got["widget_views"] == 0                       # no widget state: the exporter took the static copy
    assert got["apps"] >= live and got["tokens"] > 0
    assert len(got["plots"]) >= live and sum(n > 0 for n in got["plots"]) >= live - 2   # (an empty KL panel has no traces)
