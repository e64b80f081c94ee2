"""The web page of chargen serve (issue 11), driven in a real headless Chromium against a live server.

Needs the chromium binary and chromedriver (Debian: ``apt-get install chromium chromium-driver``) and the
selenium package (a dev dependency); skipped with the reason when one is missing. A screenshot of the page
after a generation goes to $CHARGEN_ARTIFACTS (or the test's tmp folder).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from pathlib import Path

import pytest

uvicorn = pytest.importorskip("uvicorn", reason="chargen[serve] is not installed")
httpx = pytest.importorskip("httpx")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (a dev dependency)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

from chargen import Sampler  # noqa: E402
from chargen.serve.app import Limits  # noqa: E402
from conftest import LiveServer, SlowStep  # noqa: E402

KEY = "sk-page-key"
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        f"no {'chromium' if CHROMIUM is None else 'chromedriver'} on PATH (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def run(golden_run) -> Path:
    return golden_run


@pytest.fixture(scope="module")
def server(run):
    sampler = Sampler.load(run, backend="torch")
    # set before the server starts: its Batcher takes the sampler's fast_step when it is made (at startup)
    sampler.fast_step = SlowStep(sampler.fast_step, 0.003)
    s = LiveServer(run, sampler=sampler, run_dir=run, limits=Limits(max_length=4096))
    yield s
    s.stop()


# ---- helpers ----------------------------------------------------------------


def until(condition, timeout: float = 10.0, what: str = "a condition"):
    """Poll ``condition`` until it is truthy (returned) or the deadline passes (fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def text(driver, id_: str) -> str:
    return driver.execute_script("return document.getElementById(arguments[0]).textContent", id_)


def state(driver) -> str:
    return driver.execute_script("return document.body.dataset.state")


def fill(driver, id_: str, value) -> None:
    field = driver.find_element(By.ID, id_)
    field.clear()
    if value != "":
        field.send_keys(str(value))


def settings(driver, prompt: str, length: int, temperature: float, seed="") -> None:
    fill(driver, "prompt", prompt)
    fill(driver, "length", length)
    fill(driver, "temperature", temperature)
    fill(driver, "seed", seed)


def generate(driver, timeout: float = 15.0) -> str:
    """Press Generate and wait until the page is idle again; the generated text."""
    driver.find_element(By.ID, "generate").click()
    until(lambda: state(driver) == "idle", timeout, "the generation to end")
    return text(driver, "output-text")


def visible_error(driver) -> str:
    return driver.execute_script("const e = document.getElementById('error'); return e.hidden ? '' : e.textContent")


def expected(server, prompt: str, **settings) -> str:
    """What the server's sampler generates for these settings (its step's delay off meanwhile: same text)."""
    step = server.sampler.fast_step
    delay, step.delay = step.delay, 0
    try:
        return server.sampler.generate(prompt, **settings)
    finally:
        step.delay = delay


def api_error(url: str, body: dict, headers: dict | None = None) -> tuple[int, str]:
    r = httpx.post(url + "/v1/completions", json=body, headers=headers or {}, timeout=30)
    return r.status_code, r.json()["error"]["message"]


# ---- the tests ----------------------------------------------------------------


def test_the_run_panel_shows_the_runs_sizes_and_curve(browser, server):
    browser.get(server.url)
    until(lambda: text(browser, "parameters") != "–", what="the run panel")
    run = httpx.get(server.url + "/v1/run").json()
    assert text(browser, "parameters").replace(",", "") == str(run["parameters"])
    assert text(browser, "vocab-size").replace(",", "") == str(run["corpus"]["vocab_size"])
    assert text(browser, "model-name") == "golden"
    assert text(browser, "model-size").startswith("LSTM, 1 layer of 16")
    val, train = run["val_bpc"], run["train_loss"]
    assert len(val) == 2 and len(train) == 1  # the golden run's metrics.jsonl

    def points(selector):
        return [
            tuple(map(float, p.split(",")))
            for p in browser.find_element(By.CSS_SELECTOR, selector).get_attribute("points").split()
        ]

    val_points, train_points = points("#curve polyline.val"), points("#curve polyline.train")
    assert len(val_points) == len(val) and len(train_points) == len(train)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#curve circle.dot")) == len(val)
    # x follows the step, and y the bpc (up is lower); training loss is drawn in bits (loss / ln 2)
    drawn = [
        (x, y, bpc)
        for (x, y), (_, bpc) in zip(
            val_points + train_points, val + [[s, loss / 0.6931471805599453] for s, loss in train]
        )
    ]
    assert sorted(drawn, key=lambda d: d[1]) == sorted(drawn, key=lambda d: -d[2])
    assert [x for x, _ in val_points] == sorted(x for x, _ in val_points)
    labels = [t.get_attribute("textContent") for t in browser.find_elements(By.CSS_SELECTOR, "#curve text")]
    assert "step" in labels and len(labels) >= 5  # tick labels on both axes

    browser.set_window_size(380, 900)  # a narrow window: nothing wider than the viewport
    try:
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        browser.set_window_size(1100, 1100)


def test_a_generation_streams_into_the_page_and_is_the_samplers(browser, server, tmp_path):
    browser.get(server.url)
    settings(browser, "the ", 200, 0.7, 11)
    browser.find_element(By.ID, "generate").click()
    lengths, buttons = set(), set()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        length, busy, gen_disabled, stop_disabled = browser.execute_script(
            "return [document.getElementById('output-text').textContent.length, document.body.dataset.state,"
            " document.getElementById('generate').disabled, document.getElementById('stop-button').disabled]"
        )
        if busy != "streaming":
            break
        lengths.add(length)
        buttons.add((gen_disabled, stop_disabled))
        time.sleep(0.01)
    assert state(browser) == "idle"
    assert len({n for n in lengths if 0 < n < 200}) >= 2, f"no growth seen while streaming: {sorted(lengths)}"
    assert buttons == {(True, False)}  # while streaming: Generate off, Stop on
    want = expected(server, "the ", length=200, temperature=0.7, seed=11)
    assert text(browser, "output-text") == want and len(want) == 200
    assert text(browser, "output-prompt") == "the "
    status = text(browser, "status")
    assert (
        status.startswith("200 characters · ") and "chars/s" in status and status.endswith("finished: length reached")
    )
    assert browser.find_element(By.ID, "generate").is_enabled()
    assert not browser.find_element(By.ID, "stop-button").is_enabled()
    assert visible_error(browser) == ""

    folder = Path(os.environ.get("CHARGEN_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / "page-after-generation.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) > 10_000
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 600 and height >= 400


def test_a_bad_prompt_shows_the_servers_message_then_a_good_one_works(browser, server):
    browser.get(server.url)
    settings(browser, "€€", 30, 1, 4)
    assert generate(browser) == "" and text(browser, "output") == ""
    status, message = api_error(
        server.url, {"prompt": "€€", "max_tokens": 30, "temperature": 1, "seed": 4, "stream": True}
    )
    assert status == 400 and "vocabulary" in message
    assert visible_error(browser) == message

    settings(browser, "th", 50, 1, 5)
    browser.find_element(By.ID, "prompt").send_keys(Keys.CONTROL, Keys.ENTER)  # Ctrl+Enter generates
    until(lambda: state(browser) == "streaming" or text(browser, "output-text"), what="Ctrl+Enter to start")
    until(lambda: state(browser) == "idle", what="the generation to end")
    assert text(browser, "output-text") == expected(server, "th", length=50, temperature=1.0, seed=5)
    assert visible_error(browser) == ""  # the old error is gone


def test_stop_strings_top_k_top_p_and_a_seed_past_2_to_the_53(browser, server):
    browser.get(server.url)
    seed = 2**63 - 1  # a JS number would round it up, past the largest seed the server takes
    settings(browser, "the ", 300, 1.2, seed)
    fill(browser, "top-p", 0.95)
    fill(browser, "top-k", 12)
    fill(browser, "stop", "e\n\\n")  # two lines: "e" and an escaped newline
    want = expected(server, "the ", length=300, temperature=1.2, top_p=0.95, top_k=12, seed=seed, stop=("e", "\n"))
    assert len(want) < 300  # a stop string ended it
    assert generate(browser) == want and visible_error(browser) == ""
    assert text(browser, "status").endswith("finished: a stop string")

    fill(browser, "seed", "-1")  # not a seed: the server says why
    assert generate(browser) == ""
    status, message = api_error(server.url, {"prompt": "the ", "seed": "-1"})
    assert status == 400 and visible_error(browser) == message


def test_stop_ends_a_long_generation_and_frees_the_server(browser, server):
    browser.get(server.url)
    settings(browser, "the ", 4000, 0.9, 3)
    browser.find_element(By.ID, "generate").click()
    until(lambda: len(text(browser, "output-text")) >= 20, what="some text")
    assert httpx.get(server.url + "/health").json()["active"] == 1
    browser.find_element(By.ID, "stop-button").click()
    until(lambda: state(browser) == "idle", 5, "Stop to end the generation")
    assert browser.find_element(By.ID, "generate").is_enabled()
    assert not browser.find_element(By.ID, "stop-button").is_enabled()
    got = text(browser, "output-text")
    assert 20 <= len(got) < 4000
    assert got == expected(server, "the ", length=len(got), temperature=0.9, seed=3)  # what came, a prefix
    assert text(browser, "status").endswith("· stopped") and visible_error(browser) == ""
    until(lambda: httpx.get(server.url + "/health").json()["active"] == 0, 5, "the server to free the row")
    assert text(browser, "output-text") == got  # nothing more arrives


def test_a_server_with_a_key_needs_it_typed_in_and_a_server_gone_is_said_plainly(browser, run):
    keyed = LiveServer(run, api_key=KEY)  # and not started from a run folder: /v1/run is a 404
    try:
        browser.get(keyed.url)
        until(lambda: text(browser, "run-message"), what="the run panel's message")
        assert "API key" in text(browser, "run-message")
        settings(browser, "and ", 40, 0.5, 8)
        assert generate(browser) == ""
        status, message = api_error(
            keyed.url, {"prompt": "and ", "max_tokens": 40, "temperature": 0.5, "seed": 8, "stream": True}
        )
        assert status == 401 and visible_error(browser) == message

        fill(browser, "api-key", KEY)
        assert generate(browser) == keyed.sampler.generate("and ", length=40, temperature=0.5, seed=8)
        assert visible_error(browser) == ""
        assert browser.execute_script("return sessionStorage.getItem('chargen-api-key')") == KEY
        assert browser.execute_script("return localStorage.length") == 0
        # the run panel asked again with the key: now the server's 404 says why there is no run to show
        r = httpx.get(keyed.url + "/v1/run", headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 404
        until(lambda: text(browser, "run-message") == r.json()["error"]["message"], what="the run panel's 404")
    finally:
        keyed.stop()
    assert generate(browser) == ""  # the server is gone
    assert visible_error(browser).startswith("Could not reach the server")


NO_CURVES = """
const done = arguments[arguments.length - 1], real = window.fetch;
window.fetch = async (url, options) => {   // /v1/run as for a run that has not logged a step yet
  const response = await real(url, options);
  if (url !== "/v1/run") return response;
  const run = await response.json();
  run.val_bpc = []; run.train_loss = [];
  return new Response(JSON.stringify(run), {status: 200, headers: {"Content-Type": "application/json"}});
};
loadRun().then(() => done());
"""


def test_a_run_with_no_curve_yet_says_so(browser, server):
    browser.get(server.url)
    until(lambda: browser.find_elements(By.CSS_SELECTOR, "#curve polyline"), what="the curve")
    browser.execute_async_script(NO_CURVES)
    assert text(browser, "curve").startswith("No training curve yet")
    assert not browser.find_elements(By.CSS_SELECTOR, "#curve polyline, #curve circle")
    assert text(browser, "parameters").replace(",", "") == str(httpx.get(server.url + "/v1/run").json()["parameters"])


REPLAY = """
const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0)), size = arguments[1];
window.fetch = async () => new Response(new ReadableStream({start(c) {
  for (let i = 0; i < bytes.length; i += size) c.enqueue(bytes.slice(i, i + size));
  c.close();
}}), {status: 200, headers: {"Content-Type": "text/event-stream"}});
"""


@pytest.mark.parametrize("size", [1, 7])
def test_the_stream_parser_copes_with_any_split(browser, server, size):
    """The server's own stream, and one with multi-byte characters and CRLF line ends, replayed to the page in
    pieces of ``size`` bytes: events and characters cut across reads."""
    import base64

    body = {"prompt": "the ", "max_tokens": 60, "temperature": 1.0, "seed": 21, "stream": True}
    real = httpx.post(server.url + "/v1/completions", json=body, timeout=30).content
    assert real.endswith(b"data: [DONE]\n\n") and real.count(b"data: {") > 10
    pieces = ["né", "€ ", "😀", "\n", "ok"]
    made = "".join(
        f"data: {json.dumps({'choices': [{'text': p, 'finish_reason': None}]}, ensure_ascii=False)}\r\n\r\n"
        for p in pieces[:-1]
    )
    made += (
        ': a comment\r\ndata: {"choices": [{"text": "ok",\r\ndata:  "finish_reason": null}]}\r\n\r\n'  # two data lines
    )
    made += 'data: {"choices": [{"text": "", "finish_reason": "stop"}]}\r\n\r\ndata: [DONE]\r\n\r\n'
    for stream, want, reason in [
        (real, expected(server, "the ", length=60, temperature=1.0, seed=21), "length reached"),
        (made.encode(), "".join(pieces), "a stop string"),
    ]:
        browser.get(server.url)
        browser.execute_script(REPLAY, base64.b64encode(stream).decode(), size)
        fill(browser, "prompt", "the ")
        assert generate(browser) == want
        assert text(browser, "status").endswith("finished: " + reason) and visible_error(browser) == ""


def test_the_inspect_view_shows_each_characters_logprob_as_the_endpoint_gives_it(server, browser):
    """Paste a text, press Inspect: one element per character, its data-logprob the JSON's; the text of a
    generated sample is inspected from the button under it."""
    browser.get(server.url + "/")
    box = browser.find_element(By.ID, "inspect-input")
    box.clear()
    box.send_keys("the cat said no\nand so it was.")
    browser.find_element(By.ID, "inspect-button").click()
    until(lambda: browser.execute_script("return document.body.dataset.inspect") == "done", what="the inspection")
    want = httpx.post(server.url + "/v1/inspect", json={"text": "the cat said no\nand so it was."}).json()
    spans = browser.find_elements(By.CSS_SELECTOR, "#inspect-view .ch")
    assert [s.get_attribute("data-logprob") for s in spans] == [str(x) for x in want["logprobs"]]
    assert (
        browser.execute_script(
            "return [...document.querySelectorAll('#inspect-view .ch')].map(s => s.textContent).join('')"
        )
        == "the cat said no\nand so it was."
    )
    assert len(browser.find_elements(By.CSS_SELECTOR, "#inspect-view .gate-dot")) > 0
    settings(browser, "the ", 40, 1.0, seed=3)
    assert generate(browser, timeout=30) != ""
    browser.execute_script("document.body.dataset.inspect = ''")
    browser.find_element(By.ID, "inspect-output").click()
    until(
        lambda: browser.execute_script("return document.body.dataset.inspect") == "done", what="the sample's inspection"
    )
    sample = text(browser, "output-prompt") + text(browser, "output-text")
    assert browser.find_element(By.ID, "inspect-input").get_attribute("value") == sample
    assert len(browser.find_elements(By.CSS_SELECTOR, "#inspect-view .ch")) == len(sample)


def test_the_inspect_view_keeps_as_many_units_as_the_server_allows(server, browser):
    """A 3x512 LSTM's 1,000 characters would be 3,072,000 activations (over the server's 2,097,152): the page
    asks for the first units of each layer that fit a million, all of them for a short text."""
    browser.get(server.url + "/")
    until(lambda: text(browser, "parameters") != "–", what="the run panel")
    assert browser.execute_script("return unitsToKeep(100)") is None  # the golden run's 16 units all fit
    kept = browser.execute_script(
        "runModel = {cell: 'lstm', num_layers: 3, hidden_size: 512}; return [unitsToKeep(1000), unitsToKeep(10)]"
    )
    assert kept[0] == list(range(166)) and 1000 * 3 * 2 * 166 <= 2_097_152 and kept[1] is None
    assert browser.execute_script("return unitsToKeep(10000000)") == []
