"""The inspector's report (issue 34): one self-contained HTML file, checked in a real headless Chromium, and
the shaded terminal text. A screenshot of the report goes to $CHARGEN_ARTIFACTS (or the test's tmp folder)."""

import os
import re
from pathlib import Path

import pytest
from test_inspect import TEXT, planted
from test_sampler import make_sampler

from chargen.generate.report import SHADES, ansi, html, shade

pytest.importorskip("selenium.webdriver", reason="selenium is not installed (a dev dependency)")
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    seen = planted().inspect(TEXT, best=3)
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(html(seen, "planted: what the network sees"), encoding="utf-8")
    return seen, path


def test_the_report_is_self_contained(report):
    _, path = report
    page = path.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", page) and "@import" not in page
    assert page.count("</script>") == 3  # the data, the view, the call: no "</script>" inside the data


def test_every_character_carries_its_logprob_in_chromium(report, browser):
    seen, path = report
    browser.get(path.as_uri())
    spans = browser.find_elements(By.CSS_SELECTOR, "#inspect-text .ch")
    assert [s.get_attribute("data-logprob") for s in spans] == [str(round(float(x), 6)) for x in seen.logprobs]
    assert (
        "".join(browser.execute_script("return [...document.querySelectorAll('.ch')].map(s => s.textContent)")) == TEXT
    )
    colours = browser.execute_script("return [...document.querySelectorAll('.ch')].map(s => s.style.background)")
    assert len(set(colours)) >= 2  # shaded by surprise
    shots = Path(os.environ.get("CHARGEN_ARTIFACTS") or path.parent)
    shots.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(shots / "inspect-report.png"))


def test_hovering_a_character_shows_its_guesses(report, browser):
    seen, path = report
    browser.get(path.as_uri())
    target = browser.find_elements(By.CSS_SELECTOR, "#inspect-text .ch")[5]
    ActionChains(browser).move_to_element(target).perform()
    tip = browser.find_element(By.ID, "inspect-tip")
    assert tip.is_displayed() and tip.get_attribute("data-i") == "5"
    lines = tip.text.splitlines()
    assert len(lines) == 1 + len(seen.top[5])
    shown = [line.rsplit(" ", 1)[0].strip() for line in lines[1:]]
    assert shown == [{" ": "\u2423", "\n": "\\n"}.get(c, c) for c, _ in seen.top[5]]


def test_the_unit_picker_and_the_interesting_units_recolour_the_text(report, browser):
    _seen, path = report
    browser.get(path.as_uri())
    before = browser.execute_script("return document.querySelectorAll('.ch')[3].style.background")
    Select(browser.find_element(By.ID, "unit-layer")).select_by_value("layer 0|h")
    Select(browser.find_element(By.ID, "unit-index")).select_by_value("0")
    after = [browser.execute_script(f"return document.querySelectorAll('.ch')[{t}].style.background") for t in (3, 4)]
    assert after[0] != before
    upper = next(t for t, c in enumerate(TEXT) if c.isupper())
    first = browser.find_element(By.CSS_SELECTOR, ".units button.unit")  # upper case's best: unit 0
    Select(browser.find_element(By.ID, "unit-layer")).select_by_value("")  # back to surprise
    feature = browser.execute_script(
        "return arguments[0].closest('.feature').querySelector('.name').textContent", first
    )
    buttons = browser.find_elements(By.CSS_SELECTOR, ".feature")
    case = next(b for b in buttons if b.text.startswith("upper case"))
    case.find_element(By.CSS_SELECTOR, "button.unit").click()
    assert (
        Select(browser.find_element(By.ID, "unit-layer"))
        .first_selected_option.get_attribute("value")
        .startswith("layer 0|")
    )
    red = browser.execute_script(f"return document.querySelectorAll('.ch')[{upper}].style.background")
    blue = browser.execute_script("return document.querySelectorAll('.ch')[0].style.background")
    assert red.startswith("rgb(255,") and blue.endswith(", 255)"), (red, blue, feature)


def test_the_gate_picture_has_a_dot_per_unit_and_gate(report, browser):
    _seen, path = report
    browser.get(path.as_uri())
    dots = browser.find_elements(By.CSS_SELECTOR, ".gates .gate-dot")
    assert len(dots) == 3 * 8  # input, forget, output for each of 8 units
    assert {d.get_attribute("data-gate") for d in dots} == {"input", "forget", "output"}


def test_the_terminal_shades_each_character_by_its_surprise():
    s = make_sampler(backend="numpy")
    seen = s.inspect("the king\nsaid")
    out = ansi(seen)
    assert re.sub(r"\x1b\[[0-9;]*m", "", out) == "the king\nsaid"
    first = f"\x1b[30;48;5;{shade(-float(seen.logprobs[0]))}m"
    assert out.startswith(first) and out.endswith("\x1b[0m")
    assert [shade(x) for x in (0.1, 0.7, 1.5, 2.5, 4.0, 9.0)] == [c for _, c in SHADES]


@pytest.mark.parametrize("rows", [1, 3, 4096])
def test_the_json_written_in_pieces_is_the_whole_json(rows):
    from chargen.generate.report import json_pieces, json_text

    seen = planted().inspect(TEXT, units=[0, 2])
    assert "".join(json_pieces(seen, rows=rows)) == json_text(seen)
    none = planted().inspect(TEXT, units=[])
    assert "".join(json_pieces(none, rows=rows)) == json_text(none)


def test_the_terminal_shows_control_characters_as_pictures():
    from chargen.generate.report import _visible

    assert [_visible(c) for c in "\x1b\x07\r\x7fa\t"] == ["\u241b", "\u2407", "\u240d", "\u2421", "a", "\t"]
