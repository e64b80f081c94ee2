"""chargen serve --offer-browser (issue 35): the served run as a browser export at /web/, linked from the page;
the visitor's Chromium generates there the NumPy backend's text. Without the flag, /web/ is a 404 that says
how to offer it, and the page shows no link."""

from __future__ import annotations

import json
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn", reason="chargen[serve] is not installed")

from chargen import Sampler  # noqa: E402
from chargen.generate.web_export import web_files  # noqa: E402
from conftest import serve_process, until  # noqa: E402

KEY = "sk-browser-key"


@pytest.fixture(scope="module")
def offered(golden_run):
    proc, url = serve_process(golden_run, "--offer-browser", "--backend", "numpy", "--api-key", KEY)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_the_files_are_the_exports_without_a_key(offered, golden_run):
    want = web_files(golden_run)
    for path, name, kind in [
        ("/web/", "index.html", "text/html"),
        ("/web/chargen.js", "chargen.js", "text/javascript"),
        ("/web/model.json", "model.json", "application/json"),
        ("/web/model.safetensors", "model.safetensors", "application/octet-stream"),
    ]:
        r = httpx.get(offered + path)  # no key: a browser's module imports cannot send one
        assert r.status_code == 200 and r.content == want[name] and r.headers["content-type"].startswith(kind), path
    r = httpx.get(offered + "/web")
    assert r.status_code == 308 and r.headers["location"] == "/web/"
    r = httpx.get(offered + "/web/secrets.txt")
    assert r.status_code == 404 and r.json()["error"]["message"] == "no file /web/secrets.txt; the page is /web/"
    assert httpx.get(offered + "/v1/models").status_code == 401  # the API still needs the key


def test_the_page_links_to_the_browser_and_it_generates_numpys_text(offered, golden_run, browser):
    browser.get(offered + "/")
    link = until(lambda: (lambda e: e if e.is_displayed() else None)(browser.find_element("id", "browser-link")))
    link.click()
    until(lambda: browser.current_url == offered + "/web/")
    until(lambda: not browser.find_element("id", "generate").get_property("disabled"))
    assert browser.find_element("id", "name").text == golden_run.name
    browser.get(offered + "/web/?prompt=the&seed=4&length=120&temperature=1.1&top_p=0.9")
    output = browser.find_element("id", "output")
    assert until(lambda: output.get_attribute("data-done")) == "true"
    want = Sampler.load(golden_run, backend="numpy").generate("the", seed=4, length=120, temperature=1.1, top_p=0.9)
    assert browser.execute_script("return arguments[0].textContent", output) == want


def test_without_the_flag_there_is_no_browser_export(golden_run, browser):
    proc, url = serve_process(golden_run, "--backend", "numpy")
    try:
        r = httpx.get(url + "/web/")
        assert r.status_code == 404
        assert r.json()["error"]["message"] == (
            "this server does not offer generation in the browser; start it with --offer-browser"
        )
        assert httpx.get(url + "/web/model.json").status_code == 404
        assert httpx.get(url + "/web").status_code == 404
        browser.get(url + "/")
        until(lambda: browser.find_element("id", "model-name").text)  # the page has loaded the run
        time.sleep(0.3)  # the HEAD request for /web/model.json has had time to answer
        assert not browser.find_element("id", "browser-link").is_displayed()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert json.loads(web_files(golden_run)["model.json"])["name"] == golden_run.name
