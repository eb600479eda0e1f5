"""The dashboard in a real headless Chromium: every page, a selector changed on each, no console errors.

The server is started the way a user starts it (``attnlab dashboard DIR --no-browser``) in a subprocess.
Screenshots go to ``artifacts/dashboard/<page>.png``; measured timings to ``artifacts/dashboard/timings*.json``.
The latency bars (switch p95, opening time) are judged by ``benchmarks/dashboard_latency.py``, which runs these tests
and compares the recorded timings with the bars: a timed assertion here would fail on a slower CI machine.
Needs Chromium, chromedriver and selenium (``scripts/browser-deps.sh``); skipped when they are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.full  # whole-program tier: scripts/test.sh and CI run it (pytest --full)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

from attnlab.dashboard import ids  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "dashboard"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1440,1100")


def contention() -> float:
    """How oversubscribed the CPUs are (1 = not at all), recorded beside the timings for the benchmark."""
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))

SERVER = """
import typer
from attnlab.cli.dashboard_cmd import register
app = typer.Typer(add_completion=False)
app.callback()(lambda: None)
register(app)
app()
"""

#: How many values a plotly graph draws (decoded arrays in ``_fullData``), and its title.
GRAPH_STATE = """
const box = document.getElementById(arguments[0]);
const gd = box && box.querySelector('.js-plotly-plot');
if (!gd || !gd._fullData || !gd.layout) return null;
const count = (v) => {
  if (v === undefined || v === null) return 0;
  if (typeof v === 'string') return 1;
  if (ArrayBuffer.isView(v)) return v.length;
  if (Array.isArray(v)) return v.reduce((a, x) => a + ((Array.isArray(x) || ArrayBuffer.isView(x)) ? count(x) : 1), 0);
  return 0;
};
let n = 0;
for (const t of gd._fullData) { for (const k of ['z', 'y', 'source']) { const c = count(t[k]); if (c) { n += c; break; } } }
const title = gd.layout.title ? (gd.layout.title.text || '') : '';
const empty = !!(gd.layout.meta && gd.layout.meta.empty);
return {n: n, title: title, empty: empty, pending: gd.classList.contains('dash-graph--pending')};
"""

#: Click ``selector`` and resolve with the ms until the heatmap has redrawn with title ``expected``. Polled once per
#: animation frame (Plotly.react draws synchronously, so a frame that sees the new title comes after the drawing);
#: not ``plotly_afterplot``, which Plotly.react leaves out once the user has zoomed.
MEASURE_SWITCH = """
const [selector, expected, done] = arguments;
const box = document.getElementById('attn-heatmap');
const t0 = performance.now();
const check = () => {
  const gd = box.querySelector('.js-plotly-plot');
  if (gd && gd.layout && gd.layout.title && gd.layout.title.text === expected
      && !gd.classList.contains('dash-graph--pending')) { done(performance.now() - t0); return; }
  if (performance.now() - t0 > 15000) { done(-1); return; }
  requestAnimationFrame(check);
};
document.querySelector(selector).click();
requestAnimationFrame(check);
"""


#: Like MEASURE_SWITCH from an idle page, resolving with ``[ms to the heatmap, ms to the text view]``: the text view
#: follows the heatmap (its request leaves when the heatmap's figure arrives) and names its head in its subtitle.
MEASURE_VIEW = """
const [selector, expected, textMark, done] = arguments;
const box = document.getElementById('attn-heatmap'), text = document.getElementById('attn-text');
const t0 = performance.now();
let heatmap = null;
const check = () => {
  const gd = box.querySelector('.js-plotly-plot'), td = text.querySelector('.js-plotly-plot');
  if (heatmap === null && gd && gd.layout && gd.layout.title && gd.layout.title.text === expected
      && !gd.classList.contains('dash-graph--pending')) { heatmap = performance.now() - t0; }
  const sub = td && td.layout && td.layout.title && td.layout.title.subtitle ? td.layout.title.subtitle.text : '';
  if (heatmap !== null && sub.includes(textMark) && !td.classList.contains('dash-graph--pending')) {
    done([heatmap, performance.now() - t0]); return; }
  if (performance.now() - t0 > 15000) { done([heatmap === null ? -1 : heatmap, -1]); return; }
  requestAnimationFrame(check);
};
document.querySelector(selector).click();
requestAnimationFrame(check);
"""


def switch_clicks(n: int = 24):
    """``n`` alternating head and layer switches on the Attention page: ``(layer, head, selector to click)``."""
    layer, head = 0, 0
    for i in range(n):
        if i % 2 == 0:
            head = (head + 5) % 12
            yield layer, head, f"#{ids.ATTN_HEAD} input[value='{head}']"
        else:
            layer = (layer + 1) % 6
            yield layer, head, f"#{ids.ATTN_LAYER} input[value='{layer}']"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Words for the long Run: plain words and words MiniLM's WordPiece splits (so the labels show joined words).
LONG_WORDS = ("the attention of every head in this unbelievably long passage spreads over tokenization artefacts "
              "and the first token collects what the others leave").split()
LONG_TOKENS = 400


@pytest.fixture(scope="module")
def long_root(tmp_path_factory):
    """A folder with one MiniLM Run on a single text of exactly :data:`LONG_TOKENS` tokens."""
    from dataclasses import asdict

    from attnlab.core.capture import Capture
    from attnlab.core.runs import RunInfo, save_run
    from attnlab.hooks.inputs import capture_trace
    from attnlab.zoo import load

    model, tok, spec = load("minilm")
    words, i = [], 0
    while len(tok(" ".join(words))["input_ids"]) < LONG_TOKENS:
        word = LONG_WORDS[i % len(LONG_WORDS)]
        i += 1
        if len(tok(" ".join(words + [word]))["input_ids"]) > LONG_TOKENS:
            word = "the"  # one piece: lands exactly on the length
        words.append(word)
    text = " ".join(words)
    capture = Capture(pattern=True, stats=True)
    trace = capture_trace(model, tok, spec, capture, [text], [])
    assert trace.n_tokens == LONG_TOKENS
    root = tmp_path_factory.mktemp("long")
    save_run(root / "minilm-long", {"main": trace}, RunInfo(model=asdict(spec), inputs={"texts": [text]},
                                                           capture=asdict(capture)))
    return root


@pytest.fixture(scope="module")
def server(demo_root, long_root):
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_bin:
        pytest.skip("chromium and chromedriver are not installed (run scripts/browser-deps.sh)")
    port = _free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, "dashboard", str(demo_root), str(long_root), "--port",
                             str(port), "--no-browser"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(url + "/_dash-layout", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"the dashboard did not start:\n{log.read().decode()[-3000:]}")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    options = webdriver.ChromeOptions()
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.binary_location = shutil.which("chromium")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    driver.set_script_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def graph(driver, gid: str, timeout: float = 60, title: str | None = None, allow_empty: bool = False) -> dict:
    """Wait until graph ``gid`` holds data (and has ``title`` in its title, when given); its state."""
    def ready(d):
        state = d.execute_script(GRAPH_STATE, gid)
        if not state or state["pending"]:
            return False
        if title is not None and title not in str(state["title"]):
            return False
        return state if allow_empty or (state["n"] > 0 and not state["empty"]) else False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(ready)
    except TimeoutException:
        pytest.fail(f"graph {gid} never showed data (title {title!r}): {driver.execute_script(GRAPH_STATE, gid)}; "
                    f"page says: {driver.find_element(By.TAG_NAME, 'main').text[:500]}")


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def shot(driver, name: str) -> None:
    height = driver.execute_script("return Math.min(document.body.scrollHeight, 4000)")
    driver.set_window_size(1440, max(1100, height))
    time.sleep(1.0)  # let the responsive graphs relayout to the new window before the picture
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    driver.set_window_size(1440, 1100)


def click(driver, selector: str) -> None:
    element = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, selector))
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def go_to(driver, page_name: str) -> None:
    """Follow a navigation link (the app shell, with the chosen Run, stays)."""
    link = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.LINK_TEXT, page_name))
    link.click()


def choose_run(driver, run_id: str) -> None:
    """Pick a Run by clicking its row on the Runs page."""
    go_to(driver, "Runs")
    cell = WebDriverWait(driver, 30).until(lambda d: d.find_element(
        By.XPATH, f"//div[@id='{ids.RUNS_TABLE}']//td[@data-dash-column='run'][normalize-space()='{run_id}']"))
    cell.click()
    WebDriverWait(driver, 30).until(lambda d: f"Run {run_id}" in d.find_element(By.ID, ids.RUNS_DETAIL).text)


def choose_option(driver, dropdown_id: str, value: str) -> None:
    """Open a dcc.Dropdown and pick the option with ``value``."""
    click(driver, f"#{dropdown_id}")
    option = WebDriverWait(driver, 30).until(lambda d: d.find_element(
        By.XPATH, f"//div[contains(@class, 'dash-dropdown-options')]//input[@value='{value}']/ancestor::label[1]"))
    driver.execute_script("arguments[0].scrollIntoView({block: 'nearest'}); arguments[0].click()", option)


def runs_page_ready(driver) -> None:
    """Wait for the Runs page's table, the selected Run's details and its timing bars."""
    WebDriverWait(driver, 60, poll_frequency=0.05).until(
        lambda d: "Run 0:" in d.find_element(By.ID, ids.RUNS_DETAIL).text
        and d.find_elements(By.CSS_SELECTOR, f"#{ids.RUNS_TABLE} td")
        and d.find_elements(By.CSS_SELECTOR, f"#{ids.RUNS_TIMINGS} .timing-bar"))


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def test_every_page_in_a_browser(browser, server):
    d = browser
    timings: dict = {}

    # -- Runs: open time on the demo (from the page's navigation start to the figure drawn), cold and warm --
    # A fresh profile: nothing cached. The Runs page draws no plotly figure, so it is readable before
    # plotly.js (~5 MB) is fetched and parsed; that cost is paid on the first page with a figure.
    d.get(server + "/")
    runs_page_ready(d)
    timings["open_cold_s"] = d.execute_script("return performance.now()") / 1000
    d.get(server + "/")
    runs_page_ready(d)
    timings["open_runs_s"] = d.execute_script("return performance.now()") / 1000
    assert "minilm" in d.find_element(By.ID, ids.RUNS_DETAIL).text
    shot(d, "runs")
    choose_run(d, "0:toy-vit")
    assert "dinov2" in d.find_element(By.ID, ids.RUNS_DETAIL).text
    choose_run(d, "0:minilm")
    assert not console_errors(d)

    # -- Heads: change the statistic, then click a head to open it ---------------------------------------
    started = time.perf_counter()
    go_to(d, "Heads")
    graph(d, ids.HEADS_GRID, title="entropy")
    timings["first_figure_cold_s"] = time.perf_counter() - started  # includes fetching and parsing plotly.js
    choose_option(d, ids.HEADS_STAT, "sinks")
    graph(d, ids.HEADS_GRID, title="sink mass")
    shot(d, "heads")
    d.execute_script("""const gd = document.querySelector('#heads-grid .js-plotly-plot');
                        gd.emit('plotly_click', {points: [{x: 4, y: '2', curveNumber: 0, pointNumber: [2, 4]}]});""")
    WebDriverWait(d, 30).until(lambda drv: "/attention" in drv.current_url)
    assert "layer=2" in d.current_url and "head=4" in d.current_url
    graph(d, ids.ATTN_HEATMAP, title="layer 2, head 4")
    assert not console_errors(d)

    # -- Attention: switch layer and head by mouse and keyboard, measure, hover the text view ------------
    d.get(server + "/attention")
    graph(d, ids.ATTN_HEATMAP, title="layer 0, head 0")
    timings["open_attention_s"] = d.execute_script("return performance.now()") / 1000
    graph(d, ids.ATTN_TEXT)
    latencies = []
    for layer, head, selector in switch_clicks():
        ms = d.execute_async_script(MEASURE_SWITCH, selector, f"layer {layer}, head {head}")
        assert ms >= 0, f"the heatmap never showed layer {layer}, head {head}"
        latencies.append(ms)
    timings["switch_ms"] = latencies
    timings["switch_p50_ms"] = sorted(latencies)[len(latencies) // 2]
    timings["switch_p95_ms"] = p95(latencies)
    radio = d.find_element(By.CSS_SELECTOR, f"#{ids.ATTN_HEAD} input[value='{head}']")
    radio.send_keys(Keys.ARROW_RIGHT)  # keyboard: the next head
    graph(d, ids.ATTN_HEATMAP, title=f"layer {layer}, head {(head + 1) % 12}")
    before = graph(d, ids.ATTN_TEXT)
    choose_option(d, ids.ATTN_FOCUS, "3")  # hover only informs; a click or the Focus token list refocuses
    WebDriverWait(d, 30).until(lambda drv: "(position 3)" in (drv.execute_script(TEXT_STATE) or {}).get("title", ""))
    assert before["n"] > 0
    shot(d, "attention")
    assert not console_errors(d)

    # -- Attention over an image (LVLM) ------------------------------------------------------------------
    choose_run(d, "0:toy-llava")
    go_to(d, "Attention")
    graph(d, ids.ATTN_HEATMAP)
    overlay = graph(d, ids.ATTN_IMAGE)
    assert overlay["n"] >= 17  # the image and the 4 x 4 patch grid
    choose_option(d, ids.ATTN_QUERY, "17")
    graph(d, ids.ATTN_IMAGE, title="")
    shot(d, "attention-image")
    assert not console_errors(d)

    # -- Flow (ViT): rollout, then attention flow ----------------------------------------------------------
    choose_run(d, "0:toy-vit")
    go_to(d, "Flow")
    graph(d, ids.FLOW_BAR, title="rollout")
    graph(d, ids.FLOW_GRID)
    click(d, f"#{ids.FLOW_METHOD} input[value='flow']")
    graph(d, ids.FLOW_BAR, title="flow relevance")
    shot(d, "flow")
    assert not console_errors(d)

    # -- Sinks & registers: change the rule; the ViT beside its register twin ------------------------------
    go_to(d, "Sinks & registers")
    graph(d, ids.SINKS_HEATMAP, title="(act_relative rule)")  # the library's default rule
    graph(d, ids.SINKS_MASSIVE)
    graph(d, ids.SINKS_NORMS, title="without registers")
    graph(d, ids.SINKS_NORMS_OTHER, title="with registers")
    click(d, f"#{ids.SINKS_RULE} input[value='act']")
    graph(d, ids.SINKS_HEATMAP, title="(act rule)")
    shot(d, "sinks")
    assert not console_errors(d)

    # -- QK embedding (MiniLM): colour by position, click a point ----------------------------------------
    choose_run(d, "0:minilm")
    go_to(d, "QK embedding")
    graph(d, ids.QK_GRID, timeout=90)
    graph(d, ids.QK_DETAIL)
    click(d, f"#{ids.QK_COLOUR} input[value='position']")
    click(d, f"#{ids.QK_HEAD} input[value='2']")
    graph(d, ids.QK_DETAIL, title="head 2")
    d.execute_script("""const gd = document.querySelector('#qk-detail .js-plotly-plot');
                        const t = gd._fullData[0];
                        gd.emit('plotly_click', {points: [{customdata: t.customdata[4], curveNumber: 0, pointNumber: 4}]});""")
    graph(d, ids.QK_TOKEN, title="attends to")
    shot(d, "qk")
    assert not console_errors(d)

    # -- Circuits (toy-gpt-tables: hand-written tables, known values): move the threshold by keyboard ------
    choose_run(d, "0:toy-gpt-tables")
    go_to(d, "Circuits")
    graph(d, ids.CIRCUITS_GRAPH, title="strength ≥ 0.1)")  # the slider starts at the weakest stored edge
    graph(d, ids.CIRCUITS_PATCHING)
    assert "4 of 4 edges" in d.find_element(By.ID, ids.CIRCUITS_READOUT).text
    thumb = d.find_element(By.CSS_SELECTOR, f"#{ids.CIRCUITS_MIN} [role='slider']")
    for _ in range(16):
        thumb.send_keys(Keys.ARROW_RIGHT)
    graph(d, ids.CIRCUITS_GRAPH, title="strength ≥ 0.26)")
    assert "2 of 4 edges" in d.find_element(By.ID, ids.CIRCUITS_READOUT).text  # 0.7 and 0.4 pass
    shot(d, "circuits")
    assert not console_errors(d)

    # -- Interventions & evals ----------------------------------------------------------------------------
    choose_run(d, "0:minilm")
    go_to(d, "Interventions & evals")
    graph(d, ids.IV_MAPS)
    click(d, f"#{ids.IV_HEAD} input[value='3']")
    click(d, f"#{ids.IV_LAYER} input[value='4']")
    WebDriverWait(d, 30).until(lambda drv: "layer 4" in drv.find_element(By.ID, ids.IV_MESSAGE).text
                               or drv.execute_script(GRAPH_STATE, ids.IV_MAPS)["n"] > 0)
    graph(d, ids.IV_EVAL_CHART, title="f1")
    choose_option(d, ids.IV_METRIC, "accuracy")
    graph(d, ids.IV_EVAL_CHART, title="accuracy")
    assert "pope" in d.find_element(By.ID, ids.IV_EVAL_TABLE).text
    choose_option(d, ids.IV_EVAL, "0:toy-llava-eval")  # the demo's own eval: four methods, POPE and CHAIR
    WebDriverWait(d, 30).until(lambda drv: "chair" in drv.find_element(By.ID, ids.IV_EVAL_TABLE).text
                               and "vhr" in drv.find_element(By.ID, ids.IV_EVAL_TABLE).text)
    assert len(graph(d, ids.IV_EVAL_CHART, title="accuracy")) and not console_errors(d)
    shot(d, "interventions")
    assert not console_errors(d)

    timings["cpu_contention"] = slack = contention()
    (ARTIFACTS / "timings.json").write_text(json.dumps(timings, indent=1))
    print(f"\nopen: first visit {timings['open_cold_s']:.2f} s, first figure {timings['first_figure_cold_s']:.2f} s "
          f"after navigating to Heads; Runs {timings['open_runs_s']:.2f} s, Attention "
          f"{timings['open_attention_s']:.2f} s; layer/head switch p50 {timings['switch_p50_ms']:.0f} ms, "
          f"p95 {timings['switch_p95_ms']:.0f} ms (CPU contention x{slack:.1f})")


def test_errors_show_a_message_and_the_app_keeps_serving(browser, server):
    """A Run a page cannot show gives a message (not a stack trace); malformed URLs fall back; the app goes on."""
    d = browser
    d.get(server + "/")
    runs_page_ready(d)
    choose_run(d, "0:eval-compare")  # results only: no attention to draw
    go_to(d, "Attention")
    box = WebDriverWait(d, 30).until(lambda drv: drv.find_element(By.CSS_SELECTOR, f"#{ids.ATTN_MESSAGE} .message"))
    assert "result tables only" in box.text and "Traceback" not in d.page_source
    choose_run(d, "0:minilm")
    go_to(d, "Attention")
    graph(d, ids.ATTN_HEATMAP, title="layer 0, head 0")
    d.get(server + "/attention?layer=x&head=-4")  # malformed query: the first layer and head
    graph(d, ids.ATTN_HEATMAP, title="layer 0, head 0")
    d.get(server + "/no-such-page")
    WebDriverWait(d, 30).until(lambda drv: "404" in drv.find_element(By.TAG_NAME, "body").text)
    d.get(server + "/heads")
    graph(d, ids.HEADS_GRID)
    assert not console_errors(d)


#: The drawn heatmap: labels, colour range, the largest value, and the share of cells above 10% of the range
#: (for the range drawn and for the fixed 0-1 range).
HEATMAP_STATE = """
const gd = document.querySelector('#attn-heatmap .js-plotly-plot');
const t = gd._fullData[0];
let top = -Infinity, n = 0, lit = 0, litFixed = 0;
for (const row of t.z) { for (const v of row) { if (v === null || Number.isNaN(v)) continue; n += 1;
  if (v > top) top = v; if (v > t.zmin + 0.1 * (t.zmax - t.zmin)) lit += 1; if (v > 0.1) litFixed += 1; } }
return {x: Array.from(t.x), y: Array.from(t.y), zmin: t.zmin, zmax: t.zmax, top: top, lit: lit / n,
        litFixed: litFixed / n, colorbar: t.colorbar.title.text, title: gd.layout.title.text,
        subtitle: gd.layout.title.subtitle ? gd.layout.title.subtitle.text : '',
        filename: gd._context.toImageButtonOptions.filename, aliases: gd.layout.yaxis.labelalias || {}};
"""
#: Zoom the heatmap to categories [a, b] on both axes; resolves with the tick labels drawn after the redraw.
ZOOM_TICKS = """
const [a, b, done] = arguments;
const gd = document.querySelector('#attn-heatmap .js-plotly-plot');
Plotly.relayout(gd, {'xaxis.range': [a - 0.5, b + 0.5], 'yaxis.range': [b + 0.5, a - 0.5]}).then(() => {
  const texts = (sel) => Array.from(gd.querySelectorAll(sel)).map((e) => e.textContent.replace(/\u200b/g, ''));
  done({x: texts('.xtick text'), y: texts('.ytick text')});
});
"""


#: Hover heatmap cell (column a, the row of the b-th hover alias); resolves with the hover box's text, the row's
#: category label and the drawn y tick texts.
HOVER_LABEL = """
const [a, b, done] = arguments;
const gd = document.querySelector('#attn-heatmap .js-plotly-plot');
const label = Object.keys(gd.layout.yaxis.labelalias)[b].replace(/\u200b/g, '');
const row = gd._fullData[0].y.indexOf(label);
Plotly.Fx.hover(gd, {xval: a, yval: row});
setTimeout(() => done({hover: Array.from(gd.querySelectorAll('.hoverlayer text')).map((e) => e.textContent).join(' '),
                       label: label, ticks: Array.from(gd.querySelectorAll('.ytick text')).map((e) => e.textContent)}),
           300);
"""


def query(driver) -> dict:
    """The current address's query (first value per key)."""
    from urllib.parse import parse_qs, urlsplit

    return {k: v[0] for k, v in parse_qs(urlsplit(driver.current_url).query).items()}


def wait_query(driver, **expected) -> dict:
    """Wait until the address bar's query holds ``expected`` (values compared as strings)."""
    try:
        return WebDriverWait(driver, 30, poll_frequency=0.1).until(
            lambda d: (lambda q: q if all(q.get(k) == str(v) for k, v in expected.items()) else False)(query(d)))
    except TimeoutException:
        pytest.fail(f"the URL never held {expected}: {driver.current_url}")


def test_long_input_heatmap_is_readable_and_fast(browser, server):
    """400 tokens: layer/head switches stay under the latency bar, the colour range follows the head (not
    saturated, not uniformly dark), and every label is reachable by hover and zoom."""
    d = browser
    d.get(server + "/attention?run=1:minilm-long&layer=0&head=0")
    graph(d, ids.ATTN_HEATMAP, title="layer 0, head 0", timeout=90)
    graph(d, ids.ATTN_TEXT)
    latencies, full = [], []  # each switch from a settled page: heatmap and text view drawn
    for layer, head, selector in switch_clicks():
        heatmap_ms, view_ms = d.execute_async_script(MEASURE_VIEW, selector, f"layer {layer}, head {head}",
                                                     f"layer {layer} · head {head} ·")
        assert heatmap_ms >= 0 and view_ms >= 0, f"the views never showed layer {layer}, head {head}"
        latencies.append(heatmap_ms)
        full.append(view_ms)
    slack = contention()
    timings = {"switch_400_ms": latencies, "switch_400_p50_ms": sorted(latencies)[len(latencies) // 2],
               "switch_400_p95_ms": p95(latencies), "text_view_400_p50_ms": sorted(full)[len(full) // 2],
               "text_view_400_p95_ms": p95(full), "cpu_contention": slack}
    (ARTIFACTS / "timings-400.json").write_text(json.dumps(timings, indent=1))
    print(f"\n400 tokens: layer/head switch p50 {timings['switch_400_p50_ms']:.0f} ms, "
          f"p95 {timings['switch_400_p95_ms']:.0f} ms; text view follows at p50 {timings['text_view_400_p50_ms']:.0f} "
          f"ms, p95 {timings['text_view_400_p95_ms']:.0f} ms (CPU contention x{slack:.1f})")

    # MiniLM's first-layer heads spread their attention (no weight reaches 0.1 at 400 tokens): the case a fixed
    # 0-1 scale draws uniformly dark
    click(d, f"#{ids.ATTN_LAYER} input[value='0']")
    click(d, f"#{ids.ATTN_HEAD} input[value='0']")
    graph(d, ids.ATTN_HEATMAP, title="layer 0, head 0")
    state = d.execute_script(HEATMAP_STATE)
    assert len(state["x"]) == len(state["y"]) == LONG_TOKENS and len(set(state["y"])) == LONG_TOKENS
    assert "per-head max" in state["colorbar"] and state["zmax"] == pytest.approx(state["top"]) and state["top"] < 1
    assert state["lit"] > max(0.02, 10 * state["litFixed"])  # cells that show colour, against the fixed scale
    assert not [label for label in state["y"] if "##" in label]  # word pieces show their word ...
    hovered = d.execute_async_script(HOVER_LABEL, 0, next(i for i, v in enumerate(state["aliases"].values())
                                                          if "##" in v))
    assert "(piece ##" in hovered["hover"] and hovered["label"] in state["y"]  # ... and hover names the raw piece
    assert len(hovered["ticks"]) > 2 and not [t for t in hovered["ticks"] if "(piece" in t]  # the axis keeps words
    click(d, f"#{ids.ATTN_SINK} input[value='hide-first']")
    WebDriverWait(d, 30).until(lambda drv: len(drv.execute_script(HEATMAP_STATE)["x"]) == LONG_TOKENS - 1)
    hidden = d.execute_script(HEATMAP_STATE)
    assert hidden["x"] == state["x"][1:] and hidden["zmax"] == pytest.approx(hidden["top"])
    ticks = d.execute_async_script(ZOOM_TICKS, 200, 209)
    assert set(hidden["x"][200:210]) <= set(ticks["x"]), ticks  # zoomed to 10 tokens, every label is drawn
    assert set(hidden["y"][200:210]) <= set(ticks["y"]), ticks
    shot(d, "attention-long")
    assert not console_errors(d)


#: The minimap box's visibility, its outline and the heatmap's drawn key range.
MINIMAP_STATE = """
const box = document.getElementById('attn-minimap-box');
const gd = document.querySelector('#attn-minimap .js-plotly-plot');
const heat = document.querySelector('#attn-heatmap .js-plotly-plot');
const drawn = !!(gd && gd._fullData && gd._fullData.length);
return {shown: !!box && box.offsetParent !== null, drawn: drawn,
        shapes: drawn ? (gd.layout.shapes || []).map((s) => [s.x0, s.x1, s.y0, s.y1]) : [],
        x: heat && heat._fullLayout ? Array.from(heat._fullLayout.xaxis.range) : null};
"""


def test_a_click_on_the_minimap_zooms_the_long_heatmap(browser, server):
    """400 tokens: the overview shows under the heatmap, a click on it zooms the heatmap to ~40 tokens around the
    clicked place and outlines that window; a short item has no overview."""
    from selenium.webdriver.common.action_chains import ActionChains

    d = browser
    d.get(server + "/attention?run=1:minilm-long&layer=0&head=0")
    graph(d, ids.ATTN_HEATMAP, title="layer 0, head 0", timeout=90)
    graph(d, ids.ATTN_MINIMAP)
    before = WebDriverWait(d, 30).until(lambda drv: (lambda s: s if s["shown"] and s["drawn"] else False)(
        drv.execute_script(MINIMAP_STATE)))
    assert before["x"] == pytest.approx([-0.5, LONG_TOKENS - 0.5]) and not before["shapes"]
    drag = d.find_element(By.CSS_SELECTOR, "#attn-minimap .nsewdrag")
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", drag)
    ActionChains(d).move_to_element(drag).pause(0.5).click().perform()  # the middle: around token 200
    after = WebDriverWait(d, 30).until(lambda drv: (lambda s: s if s["shapes"] and s["x"][1] - s["x"][0] < 60
                                                    else False)(drv.execute_script(MINIMAP_STATE)))
    assert after["x"][1] - after["x"][0] == pytest.approx(40)
    assert abs((after["x"][0] + after["x"][1]) / 2 - LONG_TOKENS / 2) < 25
    assert after["shapes"][0][:2] == pytest.approx(after["x"])  # the outline is the window shown
    d.execute_async_script(ZOOM_TICKS, 300, 349)  # a zoom on the heatmap itself moves the outline too
    zoomed = WebDriverWait(d, 30).until(lambda drv: (lambda s: s if s["shapes"] and s["shapes"][0][0] == 299.5
                                                     else False)(drv.execute_script(MINIMAP_STATE)))
    assert zoomed["shapes"][0] == pytest.approx([299.5, 349.5, 299.5, 349.5])
    shot(d, "attention-minimap")
    d.get(server + "/attention?run=0:minilm&layer=2&head=3")
    graph(d, ids.ATTN_HEATMAP, title="layer 2, head 3")
    graph(d, ids.ATTN_TEXT)
    assert not d.execute_script(MINIMAP_STATE)["shown"]
    assert not console_errors(d)


#: The text view: each cell's position (customdata[0]) and the focus named in the first panel's title.
TEXT_STATE = """
const gd = document.querySelector('#attn-text .js-plotly-plot');
if (!gd || !gd._fullData || !gd._fullData.length || gd.classList.contains('dash-graph--pending')) return null;
return {positions: Array.from(gd._fullData[0].customdata).map((c) => c[0]),
        title: gd.layout.annotations[0].text, cmax: gd._fullData[0].marker.cmax};
"""


def test_a_click_on_a_text_view_token_focuses_it(browser, server):
    """Hovering a token only shows it; a click (or the keyboard's Focus token list) makes it the focus."""
    from selenium.webdriver.common.action_chains import ActionChains

    d = browser
    d.get(server + "/attention?run=0:minilm&layer=2&head=3")
    graph(d, ids.ATTN_HEATMAP, title="layer 2, head 3")
    graph(d, ids.ATTN_TEXT)
    before = WebDriverWait(d, 30).until(lambda drv: drv.execute_script(TEXT_STATE))
    assert "(position 0)" in before["title"]
    cells = d.find_elements(By.CSS_SELECTOR, "#attn-text .trace.bars .point path")
    ActionChains(d).move_to_element(cells[5]).perform()  # a hover does not refocus
    time.sleep(1.0)
    assert "(position 0)" in d.execute_script(TEXT_STATE)["title"]
    ActionChains(d).move_to_element(cells[5]).click().perform()
    target = before["positions"][5]
    after = WebDriverWait(d, 30).until(lambda drv: (lambda s: s if s and f"(position {target})" in s["title"]
                                                    else False)(drv.execute_script(TEXT_STATE)))
    assert after["cmax"] != before["cmax"]  # the colour range follows the focused row
    choose_option(d, ids.ATTN_FOCUS, "3")  # the Focus token list (keyboard-operable) sets the focus too
    WebDriverWait(d, 30).until(lambda drv: "(position 3)" in (drv.execute_script(TEXT_STATE) or {}).get("title", ""))
    wait_query(d, run="0:minilm", layer=2, head=3, focus=3)  # the focus is in the address
    d.refresh()  # and a reload (or the copied address) opens on it
    graph(d, ids.ATTN_TEXT)
    WebDriverWait(d, 30).until(lambda drv: "(position 3)" in (drv.execute_script(TEXT_STATE) or {}).get("title", ""))
    assert not console_errors(d)


def test_the_url_round_trips_the_view(browser, server):
    d = browser
    d.get(server + "/attention?run=0:toy-gpt&item=1&layer=1&head=2&scale=log&sink=hide-first")
    graph(d, ids.ATTN_HEATMAP, title="layer 1, head 2")
    state = d.execute_script(HEATMAP_STATE)
    assert "log" in state["colorbar"] and state["subtitle"].startswith("Run 0:toy-gpt · toy-gpt · trace main · item 1")
    assert len(state["x"]) == len(state["y"]) - 1  # the sink column is hidden
    click(d, f"#{ids.ATTN_HEAD} input[value='3']")
    graph(d, ids.ATTN_HEATMAP, title="layer 1, head 3")
    wait_query(d, run="0:toy-gpt", trace="main", item=1, layer=1, head=3, scale="log", sink="hide-first")
    d.refresh()  # a reload (or the copied address) opens the same view
    graph(d, ids.ATTN_HEATMAP, title="layer 1, head 3")
    again = d.execute_script(HEATMAP_STATE)
    assert (again["colorbar"], again["x"]) == (state["colorbar"], state["x"])
    assert again["subtitle"].startswith("Run 0:toy-gpt · toy-gpt · trace main · item 1 · layer 1 · head 3")
    assert d.find_element(By.CSS_SELECTOR, "a.nav-link[aria-current='page']").text == "Attention"
    go_to(d, "Flow")  # the page links carry Run, trace, item, layer and head
    graph(d, ids.FLOW_BAR, title="rollout")
    click(d, f"#{ids.FLOW_METHOD} input[value='flow']")
    graph(d, ids.FLOW_BAR, title="flow relevance")
    wait_query(d, run="0:toy-gpt", item=1, layer=1, head=3, method="flow")
    assert d.find_element(By.CSS_SELECTOR, "a.nav-link[aria-current='page']").text == "Flow"
    d.refresh()
    graph(d, ids.FLOW_BAR, title="flow relevance")
    go_to(d, "Attention")
    graph(d, ids.ATTN_HEATMAP, title="layer 1, head 3")
    assert not console_errors(d)


def test_a_run_switch_resets_each_page(browser, server, demo_root):
    from attnlab.core.runs import Run

    d = browser
    gpt_tokens = Run.open(demo_root / "toy-gpt").trace("main").real_positions(0).numel()
    d.get(server + "/flow?run=0:minilm&position=3")
    graph(d, ids.FLOW_BAR)
    wait_query(d, run="0:minilm", position=3)
    choose_option(d, ids.RUN, "0:toy-gpt")
    wait_query(d, run="0:toy-gpt", position=gpt_tokens - 1)  # the causal model's output token, not index 3
    graph(d, ids.FLOW_BAR)

    d.get(server + "/sinks?run=0:toy-vit")
    wait_query(d, run="0:toy-vit", compare="0:toy-vit-reg")
    choose_option(d, ids.RUN, "0:toy-vit-reg")
    wait_query(d, run="0:toy-vit-reg", compare="0:toy-vit")
    graph(d, ids.SINKS_NORMS_OTHER, title="without registers")
    choose_option(d, ids.RUN, "0:minilm")  # no patch grid: the section gives way to one line
    WebDriverWait(d, 30).until(lambda drv: not drv.find_element(By.ID, ids.SINKS_NORMS_SECTION).is_displayed()
                               and "Capture(resid=True)" in drv.find_element(By.ID, ids.SINKS_NORMS_NOTE).text)
    assert "compare" not in query(d)

    d.get(server + "/interventions?run=0:minilm")
    wait_query(d, baseline="0:minilm", method="0:minilm-sink-reweight")
    choose_option(d, ids.RUN, "0:toy-llava-first-to-image")
    wait_query(d, baseline="0:toy-llava", method="0:toy-llava-first-to-image")
    graph(d, ids.IV_MAPS)
    click(d, f"#{ids.IV_METHOD}")
    listed = WebDriverWait(d, 30).until(lambda drv: [e.get_attribute("value") for e in drv.find_elements(
        By.XPATH, "//div[contains(@class, 'dash-dropdown-options')]//input")])
    assert listed == ["0:toy-llava-first-to-image"]  # same model and tokens, never the baseline itself

    # Attention and QK: a layer and head the new Run lacks (toy-gpt has 3 layers x 4 heads) become its first ones
    d.get(server + "/attention?run=0:minilm&layer=5&head=11")
    graph(d, ids.ATTN_HEATMAP, title="layer 5, head 11")
    choose_option(d, ids.RUN, "0:toy-gpt")
    wait_query(d, run="0:toy-gpt", layer=0, head=0)
    graph(d, ids.ATTN_HEATMAP, title="layer 0, head 0")
    offered = [[e.get_attribute("value") for e in d.find_elements(By.CSS_SELECTOR, f"#{gid} input")]
               for gid in (ids.ATTN_LAYER, ids.ATTN_HEAD)]
    assert offered == [["0", "1", "2"], ["0", "1", "2", "3"]]
    d.get(server + "/qk?run=0:minilm&layer=5&head=11")
    graph(d, ids.QK_DETAIL, title="layer 5, head 11")
    choose_option(d, ids.RUN, "0:toy-gpt")
    wait_query(d, run="0:toy-gpt", layer=0, head=0)
    graph(d, ids.QK_DETAIL, title="layer 0, head 0")
    graph(d, ids.QK_GRID, title="layer 0")

    # Heads: a statistic the new Run lacks gives way to entropy; a Run of result tables hides the bar and the grid
    d.get(server + "/heads?run=0:toy-gpt-tables&stat=patching")
    graph(d, ids.HEADS_GRID, title="patching effect")
    choose_option(d, ids.RUN, "0:minilm")
    wait_query(d, run="0:minilm", stat="entropy")
    graph(d, ids.HEADS_GRID, title="entropy")
    choose_option(d, ids.RUN, "0:eval-compare")
    WebDriverWait(d, 30).until(lambda drv: not drv.find_element(By.ID, ids.HEADS_CONTROLS).is_displayed()
                               and not drv.find_element(By.ID, ids.HEADS_BODY).is_displayed()
                               and "--capture stats" in drv.find_element(By.ID, ids.HEADS_MESSAGE).text)
    assert not console_errors(d)


def test_exports_carry_provenance(browser, server):
    d = browser
    d.get(server + "/attention?run=0:toy-gpt&layer=1&head=2")
    graph(d, ids.ATTN_HEATMAP, title="layer 1, head 2")
    name = WebDriverWait(d, 30).until(lambda drv: (lambda f: f if f != "attnlab" else False)(
        drv.execute_script(HEATMAP_STATE)["filename"]))
    for part in ("0-toy-gpt", "main", "item0", "layer1", "head2"):
        assert part in name
    buttons = d.execute_script("return Array.from(document.querySelectorAll('#attn-heatmap .modebar-btn'))"
                               ".map((b) => b.getAttribute('data-title'))")
    assert "Download plot as a PNG" in buttons and not [b for b in buttons if "Cloud" in b or "Chart Studio" in b]
    d.get(server + "/sinks?run=0:minilm")
    graph(d, ids.SINKS_HEATMAP)
    assert d.find_element(By.CSS_SELECTOR, f"#{ids.SINKS_TABLE} button.export").text.strip().lower() == "export"
    assert not console_errors(d)


#: Record what dcc.Download saves (the Blob and the file name) instead of writing it to disk.
CATCH_DOWNLOADS = """
window.__saved = [];
const made = URL.createObjectURL;
URL.createObjectURL = function (blob) { const url = made.call(URL, blob); window.__saved.push({blob, url}); return url; };
const keep = (a) => { const s = window.__saved.find((e) => e.url === a.href); if (s) s.name = a.download; };
HTMLAnchorElement.prototype.click = function () { keep(this); };
const send = HTMLAnchorElement.prototype.dispatchEvent;
HTMLAnchorElement.prototype.dispatchEvent = function (e) {
  if (e.type === 'click' && this.download) { keep(this); return true; } return send.call(this, e); };
"""
#: The last saved download: ``{name, text}``.
LAST_DOWNLOAD = """
const done = arguments[0], s = window.__saved[window.__saved.length - 1];
if (!s) { done(null); } else { s.blob.text().then((text) => done({name: s.name, text: text})); }
"""


def download_figure_data(d, gid: str) -> tuple[str, list[dict]]:
    """Click the "Data (.csv)" button under graph ``gid``: ``(file name, CSV rows)``."""
    import csv
    import io

    d.execute_script(CATCH_DOWNLOADS)
    click(d, "button[id*='figure-data'][id*='\"graph\":\"%s\"']" % gid)
    saved = WebDriverWait(d, 30).until(lambda drv: drv.execute_async_script(LAST_DOWNLOAD))
    return saved["name"], list(csv.DictReader(io.StringIO(saved["text"])))


def test_every_figure_downloads_the_data_it_draws(browser, server):
    """The "Data (.csv)" button under a heatmap gives one row per cell with the drawn value, under a bar chart one
    row per bar; the file is named after the figure's provenance."""
    d = browser
    d.get(server + "/attention?run=0:toy-gpt&layer=1&head=2")
    graph(d, ids.ATTN_HEATMAP, title="layer 1, head 2")
    drawn = d.execute_script("const t = document.querySelector('#attn-heatmap .js-plotly-plot')._fullData[0];"
                             "return {x: Array.from(t.x), y: Array.from(t.y), z: t.z.map((r) => Array.from(r))};")
    name, rows = download_figure_data(d, ids.ATTN_HEATMAP)
    assert name.endswith(".csv") and all(p in name for p in ("0-toy-gpt", "main", "item0", "layer1", "head2"))
    cells = [r for r in rows if r["trace"] == "0"]
    assert len(cells) == len(drawn["x"]) * len(drawn["y"])
    for r in cells[:: max(1, len(cells) // 50)]:
        i, j = int(r["row"]), int(r["col"])
        assert (r["x"], r["y"]) == (drawn["x"][j], drawn["y"][i])
        want = drawn["z"][i][j]
        assert (r["z"] == "") if want is None else float(r["z"]) == pytest.approx(want, rel=1e-6)
    d.get(server + "/flow?run=0:minilm")
    graph(d, ids.FLOW_BAR)
    n_bars = d.execute_script("return document.querySelector('#flow-bar .js-plotly-plot')._fullData[0].y.length;")
    name, rows = download_figure_data(d, ids.FLOW_BAR)
    assert "0-minilm" in name and len([r for r in rows if r["trace"] == "0"]) == n_bars > 0
    assert not console_errors(d)


PAGES = {"/": None, "/heads": ids.HEADS_GRID, "/attention": ids.ATTN_HEATMAP, "/flow": ids.FLOW_BAR,
         "/sinks": ids.SINKS_HEATMAP, "/qk": ids.QK_GRID, "/circuits": ids.CIRCUITS_GRAPH,
         "/interventions": ids.IV_MAPS}
#: True once no graph is waiting for a callback and no component is loading.
IDLE = """return document.querySelector('main h1') !== null
  && document.querySelectorAll('.dash-graph--pending, [data-dash-is-loading="true"]').length === 0;"""


def test_no_red_error_box_on_any_page_for_any_demo_run(browser, server, demo_root):
    d = browser
    d.get(server + "/")
    runs_page_ready(d)
    runs = [e.text for e in d.find_elements(By.CSS_SELECTOR, f"#{ids.RUNS_TABLE} td[data-dash-column='run']")]
    assert len(runs) >= 9 and "0:eval-compare" in runs
    found = {}
    for run_id in runs:
        for path in PAGES:
            d.get(f"{server}{path}?run={run_id}")
            for _ in range(2):  # idle twice in a row: a callback chain may pause between steps
                WebDriverWait(d, 60, poll_frequency=0.2).until(lambda drv: drv.execute_script(IDLE))
                time.sleep(0.3)
            errors = [e.text for e in d.find_elements(By.CSS_SELECTOR, ".message-error")]
            if errors:
                found[(run_id, path)] = errors
    assert not found
    assert not console_errors(d)
