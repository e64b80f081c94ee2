"""chargen export --web (issue 35): the exported folder, served by a static server on 127.0.0.1 and loaded in a
real headless Chromium, generates the NumPy backend's text for each cell, output layer and setting; streams
in Sampler.stream's pieces; stops; refuses bad settings with a message on the page; fetches nothing from
outside its folder. The WebAssembly products and the plain-JavaScript ones give the same bits."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import json
import re
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
from safetensors.numpy import load_file

import chargen
from chargen import Sampler
from chargen.generate.numpy_step import NumpyStep, log_softmax, prime
from chargen.generate.web_export import FILES, export_web, web_arrays
from conftest import REPO, until

WEB = REPO / "chargen" / "generate" / "web"
TEXT = "".join(f"{w} " for w in ("the cat sat on a mat and the dog ran far away; what a day it was! " * 80).split())
RUNS = {
    "lstm": dict(cell="lstm"),
    "gru": dict(cell="gru"),
    "tied": dict(cell="lstm", tie_weights=True, embedding_size=32),
    "adaptive": dict(cell="gru", softmax="adaptive", cutoffs=[8, 16]),
    "adaptive-lstm": dict(cell="lstm", softmax="adaptive", cutoffs=[10]),
    "rnn": dict(cell="rnn"),
    "mingru": dict(cell="mingru"),
    "minlstm": dict(cell="minlstm", embedding_size=16),  # no residual path around the first layer
}
# Fullwidth letters and capitals that NFKC and lowercasing fold away; "é" once only: below min_char_count, so
# the vocabulary gets the unknown token.
FOLDED = TEXT[:3000] + " ＴＨＥ Cat Sat ON THE MAT é " + TEXT[3000:]
GREEK = "ο δρόμος σας είναι καλός. ΟΔΟΣ ΣΟΦΟΣ. the cat sat. "  # a final Σ lowercases to σ, one letter at a time
SETTINGS = [
    dict(),
    dict(temperature=1.0),
    dict(temperature=1.6, top_k=4),
    dict(top_p=0.7),
    dict(temperature=0),
    dict(temperature=1.2, min_p=0.05),
    dict(top_k=6, top_p=0.9, temperature=0.9),
    dict(stop=["y", "at "], temperature=1.0),
]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[str, dict[str, Path]]:
    """Tiny runs of each kind exported under one folder, served on 127.0.0.1: (the server's URL, the runs)."""
    d = tmp_path_factory.mktemp("web")
    (d / "text.txt").write_text(TEXT)
    (d / "folded.txt").write_text(FOLDED)
    (d / "greek.txt").write_text(GREEK * 60)
    train = dict(max_steps=15, num_layers=2, hidden_size=32, batch_size=4, bptt=32, lr=1e-2, warmup_steps=0)
    train.update(eval_every=15, eval_chars=256, preview_chars=0, progress=False)
    kinds = {**RUNS, "folded": dict(cell="lstm", normalize="nfkc", lowercase=True, min_char_count=2)}
    kinds["greek"] = dict(cell="gru", lowercase=True, num_layers=1)
    runs = {}
    for name, kw in kinds.items():
        source = d / {"folded": "folded.txt", "greek": "greek.txt"}.get(name, "text.txt")
        chargen.train(str(source), out=d / "runs" / name, **{**train, **kw})
        runs[name] = d / "runs" / name
        export_web(runs[name], d / "site" / name)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=d / "site"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", runs
    server.shutdown()
    server.server_close()


def js(browser, code: str, *args):
    """Run ``code``, the body of an async function that sees ``m`` (chargen.js), ``model`` (loaded from the
    page's folder) and ``args``, in the open page; what it returns, or {"error": "Name: message"}."""
    script = (
        "const done = arguments[arguments.length - 1], args = Array.from(arguments).slice(0, -1);"
        "(async () => { const m = await import('./chargen.js'); const model = await m.load('./');"
        + code
        + "})().then(done, (e) => done({error: e.name + ': ' + e.message}));"
    )
    return browser.execute_async_script(script, *args)


def open_page(browser, base: str, name: str, query: dict | None = None) -> None:
    browser.get(f"{base}/{name}/index.html" + (f"?{urlencode(query, doseq=True)}" if query else ""))


def wait_done(browser) -> str:
    """The #output's data-done once set ("true", "stopped" or "error")."""
    return until(lambda: browser.find_element("id", "output").get_attribute("data-done"))


GENERATE_ALL = "const out = []; for (const [p, o] of args[0]) out.push(await model.generate(p, o)); return out;"


@pytest.mark.parametrize("name", [*RUNS, "folded"])
def test_the_page_generates_the_numpy_backends_text(browser, site, name):
    base, runs = site
    sampler = Sampler.load(runs[name], backend="numpy")
    prompts = ["the cat", "", "dog ran far"] if name != "folded" else ["ＴＨＥ Cat", "", "The dog"]
    calls = [(prompts[seed % 3], dict(length=200, seed=seed, **kw)) for kw in SETTINGS for seed in range(5)]
    open_page(browser, base, name)
    browser.set_script_timeout(60)
    got = js(browser, GENERATE_ALL, [list(c) for c in calls])
    want = [sampler.generate(p, **o) for p, o in calls]
    same = [g == w for g, w in zip(got, want)]
    for i, kw in enumerate(SETTINGS):  # a rare flip is allowed (float sums in another order), a broken rule is not
        assert sum(same[5 * i : 5 * i + 5]) >= 4, (kw, got[5 * i], want[5 * i])
    assert sum(same) >= 0.95 * len(same)
    assert any(w != want[0] for w in want[1:5])  # the seeds give different texts: the check can fail


@pytest.mark.parametrize("name", [*RUNS, "folded"])
def test_the_next_characters_log_probabilities_are_numpys(browser, site, name):
    base, runs = site
    sampler = Sampler.load(runs[name], backend="numpy")
    step: NumpyStep = sampler.runtime.step  # type: ignore[union-attr]
    prompts = ["", "t", "the cat sat on a mat and the dog ran far away; " * 3, "what a day"]
    open_page(browser, base, name)
    got = np.array(js(browser, "return args[0].map((p) => model.nextLogProbs(p));", prompts))
    for lp, prompt in zip(got, prompts):
        logits, _ = prime(step, [sampler.vocab.start_id, *sampler.encode(prompt).tolist()])
        want = log_softmax(logits[0].astype(np.float64))
        assert lp.shape == want.shape and np.abs(lp - want).max() < 2e-5, (prompt, np.abs(lp - want).max())


def test_webassembly_and_plain_javascript_give_the_same_bits(browser, site):
    base, _ = site
    open_page(browser, base, "lstm")
    code = (
        "const plain = await m.load('./', {wasm: false}); const out = [model.kernel, plain.kernel];"
        "const long = 'the cat sat on a mat '.repeat(20); const a = model.nextLogProbs(long), b = plain.nextLogProbs(long);"
        "if (a.some((v, i) => v !== b[i])) throw new Error('the kernels differ');"
        "for (const o of args[0]) out.push([await model.generate('the', o), await plain.generate('the', o)]);"
        "return out;"
    )
    got = js(browser, code, [dict(length=300, seed=s, temperature=1.5) for s in range(4)])
    assert got[:2] == ["wasm-simd", "javascript"]
    for fast, plain in got[2:]:
        assert fast == plain and len(fast) == 300


def test_streamed_pieces_are_the_samplers(browser, site):
    base, runs = site
    sampler = Sampler.load(runs["gru"], backend="numpy")
    open_page(browser, base, "gru")
    code = (
        "const out = []; for (const o of args[0]) { const pieces = [];"
        "for await (const p of model.stream('the ', o)) pieces.push(p); out.push(pieces); } return out;"
    )
    options = [
        dict(length=120, seed=1),
        dict(length=120, seed=2, stop=["at", "ay"]),
        dict(length=60, seed=3, stop="\n"),
    ]
    got = js(browser, code, options)
    for pieces, o in zip(got, options):
        assert pieces == list(sampler.stream("the ", **o))
        assert "".join(pieces) == sampler.generate("the ", **o)
    assert len(got[0]) == 120 and len(got[1]) < 120  # one piece per character; the stop string cut the second


def test_the_address_generates_at_once_into_output(browser, site):
    base, runs = site
    sampler = Sampler.load(runs["lstm"], backend="numpy")
    query = dict(prompt="the dog", seed=7, length=150, temperature=0.9, top_k=12, top_p=0.95, stop=["!", "way"])
    open_page(browser, base, "lstm", query)
    assert wait_done(browser) == "true"
    want = sampler.generate("the dog", length=150, seed=7, temperature=0.9, top_k=12, top_p=0.95, stop=["!", "way"])
    assert _text(browser) == want
    assert browser.find_element("id", "name").text == "lstm"
    about = browser.find_element("id", "about").text
    assert re.search(r"LSTM 2×32, [\d,]+ parameters, \d+ kB, \d+ characters · runs here, on WebAssembly SIMD", about)


def _text(browser) -> str:
    return browser.execute_script("return document.getElementById('output').textContent")


def test_streaming_shows_text_before_the_end_and_the_stop_button_stops(browser, site):
    base, runs = site
    open_page(browser, base, "lstm", dict(seed=3, length=2_000_000, temperature=1.0))
    first = until(lambda: _text(browser))
    assert first and browser.find_element("id", "output").get_attribute("data-done") is None  # streaming
    browser.find_element("id", "stop-button").click()
    assert wait_done(browser) == "stopped"
    text = _text(browser)
    assert len(first) <= len(text) < 2_000_000 and text.startswith(first)
    assert text == Sampler.load(runs["lstm"], backend="numpy").generate("", length=len(text), seed=3, temperature=1.0)
    assert not browser.find_element("id", "generate").get_property("disabled")
    assert browser.find_element("id", "stop-button").get_property("disabled")


@pytest.mark.parametrize(
    "query, message",
    [
        (dict(temperature="-1"), "temperature must be a number at least 0 (0 is greedy), got -1"),
        (dict(top_k="abc"), 'top_k must be a number, got "abc"'),
        (dict(top_k="2.5"), "top_k must be a whole number at least 1, got 2.5"),
        (dict(top_p="0"), "top_p must be a number above 0 and at most 1, got 0"),
        (dict(length="-3"), "length must be a whole number of characters, 0 or more, got -3"),
        (dict(seed="-5"), 'seed must be a whole number from 0 to 9223372036854775807, got "-5"'),
        (dict(seed="9223372036854775808"), "seed must be a whole number from 0 to 9223372036854775807"),
        (dict(prompt="the CAT"), 'characters not in the vocabulary: "A" "C" "T"; remove them'),
        (dict(temprature="1"), 'unknown setting(s) "temprature" in the address; the settings are prompt, length'),
    ],
)
def test_bad_settings_are_refused_with_a_message_on_the_page(browser, site, query, message):
    base, _ = site
    open_page(browser, base, "lstm", query)
    assert wait_done(browser) == "error"
    shown = browser.find_element("id", "message").text
    assert message in shown and browser.find_element("id", "message").get_attribute("class") == "error"
    assert browser.find_element("id", "output").get_attribute("data-error") == shown
    assert _text(browser) == ""


def test_the_form_refuses_and_then_generates(browser, site):
    base, runs = site
    open_page(browser, base, "gru")
    until(lambda: not browser.find_element("id", "generate").get_property("disabled"))
    field = browser.find_element("id", "top_p")
    field.send_keys("1.5")
    browser.find_element("id", "generate").click()
    assert wait_done(browser) == "error"
    assert browser.find_element("id", "message").text == "top_p must be a number above 0 and at most 1, got 1.5"
    field.clear()
    field.send_keys("0.8")
    browser.find_element("id", "seed").send_keys("11")
    browser.find_element("id", "length").send_keys("90")
    browser.find_element("id", "stop").send_keys("\\n")
    browser.find_element("id", "generate").click()
    assert wait_done(browser) == "true"
    want = Sampler.load(runs["gru"], backend="numpy").generate("", length=90, seed=11, top_p=0.8, stop=["\n"])
    assert _text(browser) == want and browser.find_element("id", "message").text.startswith("done: ")


def test_the_module_refuses_bad_options_with_chargen_errors(browser, site):
    base, _ = site
    open_page(browser, base, "adaptive")
    code = (
        "const out = []; for (const [p, o] of args[0]) {"
        "try { model.stream(p, o); out.push('accepted'); } catch (e) { out.push(e.name + ': ' + e.message); } }"
        "return out;"
    )
    cases = [
        ("the", dict(colour=1)),
        ("the", dict(length=None)),
        ("the", dict(temperature="hot")),
        ("the", dict(stop=[""])),
        ("the", dict(unknown="skip")),
        ("the", dict(seed=1.5)),
        ("Zebra", dict()),
        ("the", dict(length=3, seed=2**53)),
    ]
    got = js(browser, code, [list(c) for c in cases])
    assert got == [
        "ChargenError: unknown option(s) colour; the options are length, temperature, top_k, top_p, min_p, stop, "
        "seed, unknown, signal",
        "ChargenError: length must be a whole number of characters, 0 or more, got null",
        'ChargenError: temperature must be a number at least 0 (0 is greedy), got "hot"',
        "ChargenError: stop must be a list of non-empty strings",
        'ChargenError: unknown must be "error" or "unk", got "skip"',
        'ChargenError: seed must be a whole number from 0 to 9223372036854775807, got "1.5"',
        'ChargenError: characters not in the vocabulary: "Z" "b"; remove them: this vocabulary has no unknown token',
        'ChargenError: seed must be a whole number from 0 to 9223372036854775807, got "9007199254740992"',
    ]


def test_big_seeds_as_strings_and_the_unknown_token(browser, site):
    base, runs = site
    sampler = Sampler.load(runs["folded"], backend="numpy")
    assert sampler.vocab.unk_id is not None
    open_page(browser, base, "folded")
    seed = 2**63 - 1
    prompts = ["ＴＨＥ ＣＡＴ", "The Dog é", "ß and ǅ", "x\u0301y"]
    code = (
        "const out = []; for (const p of args[0]) out.push(model.encode(p, 'unk'));"
        "out.push(await model.generate('THE', {seed: args[1], length: 100, temperature: 1}));"
        "out.push(await model.generate('THE é', {seed: 5, length: 100, unknown: 'unk'})); return out;"
    )
    got = js(browser, code, prompts, str(seed))
    assert got[:4] == [sampler.encode(p, unknown="unk").tolist() for p in prompts]
    assert got[4] == sampler.generate("THE", seed=seed, length=100, temperature=1.0)
    assert got[5] == sampler.generate("THE é", seed=5, length=100, unknown="unk")


def test_uniforms_are_draws_py(browser, site):
    from chargen.generate.draws import uniforms_at

    base, _ = site
    open_page(browser, base, "gru")
    pairs = [(0, 0), (1, 0), (5, 255), (2**63 - 1, 9999), (123456789123456789, 3), (2**40, 2**31)]
    code = "return args[0].map(([s, t]) => m.uniform(BigInt(s), t));"
    got = js(browser, code, [[str(s), t] for s, t in pairs])
    want = [float(uniforms_at(np.uint64(s), np.uint64(t))) for s, t in pairs]
    assert got == want


def test_pairwise_sum_is_numpys(browser, site):
    base, _ = site
    open_page(browser, base, "gru")
    rng = np.random.default_rng(0)
    rows = [np.exp(rng.normal(size=n) * 4) for n in (1, 7, 8, 9, 65, 128, 129, 300, 1000)]
    got = js(
        browser,
        "return args[0].map((r) => m.pairwiseSum(Float64Array.from(r), 0, r.length));",
        [r.tolist() for r in rows],
    )
    assert got == [float(r.sum()) for r in rows]


def test_nothing_is_fetched_from_outside_the_folder(browser, site):
    base, _ = site
    open_page(browser, base, "tied", dict(seed=1, length=20))
    assert wait_done(browser) == "true"
    names = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert names and all(n.startswith(f"{base}/tied/") for n in names), names
    for name in ("index.html", "chargen.js"):
        source = (WEB / ("export.html" if name == "index.html" else name)).read_text()
        assert not re.search(r"https?://", source.replace("http.server", "")), name


def test_the_folder_holds_the_numpy_steps_arrays(site):
    _, runs = site
    for name in ("lstm", "adaptive"):
        out = runs[name].parent.parent / "site" / name
        assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
        meta = json.loads((out / "model.json").read_text())
        data = (out / "model.safetensors").read_bytes()
        assert meta["weights_sha256"] == hashlib.sha256(data).hexdigest() and meta["weights_bytes"] == len(data)
        sampler = Sampler.load(runs[name], backend="numpy")
        assert meta["chars"] == list(sampler.vocab.chars) and meta["start_id"] == sampler.vocab.start_id
        assert (meta["name"], meta["chargen_web_export"], meta["cell"]) == (name, 1, RUNS[name]["cell"])
        step: NumpyStep = sampler.runtime.step  # type: ignore[union-attr]
        arrays = load_file(str(out / "model.safetensors"))
        want = web_arrays(step)
        assert arrays.keys() == want.keys()
        for k, v in want.items():
            assert arrays[k].dtype == v.dtype and np.array_equal(arrays[k], v), k
        assert (out / "chargen.js").read_text() == (WEB / "chargen.js").read_text()


def test_the_webassembly_in_chargen_js_is_matvec_wat():
    wasmtime = pytest.importorskip("wasmtime", reason="wasmtime assembles matvec.wat (a dev dependency)")
    js_source = (WEB / "chargen.js").read_text()
    found = re.search(r'const MATVEC_WASM = // [^\n]*\n  "([A-Za-z0-9+/=]+)";', js_source)
    assert found, "no MATVEC_WASM line in chargen.js"
    assert base64.b64decode(found.group(1)) == bytes(wasmtime.wat2wasm((WEB / "matvec.wat").read_text()))


GOLDEN = REPO / "tests" / "fixtures" / "golden" / "run"


def test_the_command_line_writes_the_folder_and_says_how_to_serve_it(cli, tmp_path):
    out = tmp_path / "site"
    code, stdout, err = cli("export", str(GOLDEN), "--web", str(out))
    assert code == 0 and err == ""
    assert stdout.splitlines() == [
        f"exported {GOLDEN} (best weights) to {out}: chargen.js, index.html, model.json, model.safetensors",
        f"serve it with any static file server, such as: python -m http.server -d {out} -b 127.0.0.1",
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert all((p.stat().st_mode & 0o444) == 0o444 for p in out.iterdir())  # a web server may read them all
    code, stdout, _ = cli("export", str(GOLDEN), "--web", str(out), "--overwrite", "--checkpoint", "last", "--json")
    assert code == 0 and json.loads(stdout) == {"run": str(GOLDEN), "output": str(out), "files": sorted(FILES)}
    assert json.loads((out / "model.json").read_text())["checkpoint"] == "last"


def test_the_web_folder_rules(cli, tmp_path):
    out = tmp_path / "site"
    assert cli("export", str(GOLDEN), "--web", str(out))[0] == 0
    code, _, err = cli("export", str(GOLDEN), "--web", str(out))
    assert (code, err) == (2, f"chargen export: error: {out} already holds an export; pass --overwrite to replace it\n")
    onnx_out = tmp_path / "onnx"
    onnx_out.mkdir()
    (onnx_out / "chargen.json").write_text('{"chargen_export": 1}')  # an ONNX export is not a web export
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep me")
    for target in (onnx_out, notes):
        code, _, err = cli("export", str(GOLDEN), "--web", str(target), "--overwrite")
        assert (code, err) == (
            2,
            f"chargen export: error: {target} exists and is not a chargen web export; choose a new or empty folder "
            "(--overwrite only replaces an earlier export)\n",
        )
    assert (notes / "mine.txt").read_text() == "keep me"
    (out / "extra.css").write_text("mine")
    code, _, err = cli("export", str(GOLDEN), "--web", str(out), "--overwrite")
    assert code == 2 and "holds files that are not the export's (extra.css)" in err
    code, _, err = cli("export", str(GOLDEN), "--web", str(tmp_path / "w"), "-o", str(tmp_path / "o"))
    assert code == 2 and "argument -o/--output: not allowed with argument --web" in err
    code, _, err = cli("export", str(GOLDEN))
    assert code == 2 and "one of the arguments -o/--output --web is required" in err
    code, _, err = cli("export", str(tmp_path / "nope"), "--web", str(tmp_path / "y"))
    assert code == 2 and "does not exist" in err and not (tmp_path / "y").exists()
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()


def test_the_web_export_needs_neither_torch_nor_onnx(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['onnx'] = None; sys.modules['torch'] = None\n"
        f"sys.argv = ['chargen', 'export', {str(GOLDEN)!r}, '--web', {str(tmp_path / 'x')!r}]\n"
        "from chargen.cli import main\nsys.exit(main())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == sorted(FILES)


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    import os
    import types

    import chargen.generate.web_export as web

    class Full(types.ModuleType):  # os, but the disk fills up as the files are written
        def __getattr__(self, name):
            return getattr(os, name)

        def chmod(self, *a, **k):
            raise OSError(28, "No space left on device")

    fail = Full("os")
    monkeypatch.setattr(web, "os", fail)
    with pytest.raises(chargen.ChargenError, match=r"cannot write the export into .* \(No space left on device\)"):
        export_web(GOLDEN, tmp_path / "a" / "b" / "x")
    assert list(tmp_path.iterdir()) == []  # the folders it made are gone
    monkeypatch.undo()
    export_web(GOLDEN, tmp_path / "old")
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    monkeypatch.setattr(web, "os", fail)
    with pytest.raises(chargen.ChargenError):
        export_web(GOLDEN, tmp_path / "old", checkpoint="last", overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before


def test_the_guides_example_runs_in_a_page(browser, site):
    base, runs = site
    guide = (REPO / "docs" / "guides" / "browser.md").read_text()
    example = re.search(r"```javascript\n(.*?)```", guide, re.S).group(1)
    assert "await load(" in example and "model.stream(" in example
    open_page(browser, base, "lstm")
    example = example.replace('"ROMEO:"', '"the"').replace('"JULIET:"', '"a dog"')  # this vocabulary's prompts
    browser.execute_script(
        "const story = document.createElement('div'); story.id = 'story'; document.body.append(story);"
        "const script = document.createElement('script'); script.type = 'module';"
        "script.textContent = arguments[0] + '\\nwindow.exampleReply = reply;'; document.body.append(script);",
        example,
    )
    reply = until(lambda: browser.execute_script("return window.exampleReply"))
    sampler = Sampler.load(runs["lstm"], backend="numpy")
    assert reply == sampler.generate("a dog", length=200, top_p=0.95, seed=2, stop=["\n\n"])
    story = browser.execute_script("return document.getElementById('story').textContent")
    assert story == sampler.generate("the", length=300, temperature=0.8, seed=1)


def test_a_damaged_or_mismatched_folder_is_named_on_the_page(browser, site):
    import shutil

    base, runs = site
    root = runs["lstm"].parent.parent / "site"
    for name in ("flipped", "short", "missing"):
        shutil.rmtree(root / name, ignore_errors=True)
        shutil.copytree(root / "lstm", root / name)
    data = bytearray((root / "flipped" / "model.safetensors").read_bytes())
    data[-5] ^= 0x40
    (root / "flipped" / "model.safetensors").write_bytes(bytes(data))
    (root / "short" / "model.safetensors").write_bytes(bytes(data[:-100]))
    (root / "missing" / "model.safetensors").unlink()
    for name, message in [
        ("flipped", "model.safetensors is not the one model.json was written with; copy the export's folder again"),
        ("short", f"model.safetensors has {len(data) - 100} bytes where model.json says {len(data)}: a file is "),
        ("missing", f"cannot read {base}/missing/model.safetensors (HTTP 404); serve the export's whole folder"),
    ]:
        open_page(browser, base, name, dict(seed=1))
        assert wait_done(browser) == "error"
        assert browser.find_element("id", "message").text.startswith(f"cannot load the model: {message}"), name
        assert browser.find_element("id", "generate").get_property("disabled")


def test_lowercasing_is_one_character_at_a_time_as_in_tokenizers(browser, site):
    base, runs = site
    sampler = Sampler.load(runs["greek"], backend="numpy")
    prompts = ["ΟΔΟΣ", "ΣΟΦΟΣ. ΟΔΟΣ", "ο δρόμος ΣΑΣ", "ΣΣ Σ"]
    open_page(browser, base, "greek")
    code = (
        "const out = args[0].map((p) => model.encode(p));"
        "for (const p of args[0]) out.push(await model.generate(p, {length: 60, seed: 3, temperature: 1}));"
        "return out;"
    )
    got = js(browser, code, prompts)
    assert got[:4] == [sampler.encode(p).tolist() for p in prompts]
    assert sampler.vocab.encode_array("ς").size and got[0][-1] == sampler.vocab.chars.index("σ")  # not ς
    assert got[4:] == [sampler.generate(p, length=60, seed=3, temperature=1.0) for p in prompts]


def test_stop_strings_in_the_address_are_taken_as_given(browser, site):
    base, runs = site
    sampler = Sampler.load(runs["lstm"], backend="numpy")
    for stops in (["\n"], ["t\nd"], ["y", "a d"], ["at", "\\n"]):
        open_page(browser, base, "lstm", dict(prompt="the", seed=2, length=200, temperature=1.0, stop=stops))
        assert wait_done(browser) == "true"
        assert _text(browser) == sampler.generate("the", seed=2, length=200, temperature=1.0, stop=stops), stops
        shown = browser.find_element("id", "stop").get_property("value")
        assert shown.split("\n") == [s.replace("\\", "\\\\").replace("\n", "\\n") for s in stops]
        browser.find_element("id", "generate").click()  # the form, as the address filled it, gives the same text
        assert wait_done(browser) == "true"
        assert _text(browser) == sampler.generate("the", seed=2, length=200, temperature=1.0, stop=stops), stops


@pytest.mark.parametrize(
    "query, message",
    [
        ("seed=1&seed=2", "seed is given 2 times in the address; give it once"),
        ("length=40&length=50", "length is given 2 times in the address; give it once"),
        ("seed=", "seed is empty in the address; give a value or leave it out"),
        ("length=0x10", 'length must be a number, got "0x10"'),
        ("temperature=Infinity", 'temperature must be a number, got "Infinity"'),
        ("=5", 'unknown setting(s) "" in the address'),
        ("unknown=skip", 'unknown must be error or unk, got "skip"'),
        ("min_p=2", "min_p must be a number from 0 to 1, got 2"),
    ],
)
def test_odd_addresses_are_refused_by_name(browser, site, query, message):
    base, _ = site
    browser.get(f"{base}/lstm/index.html?{query}")
    assert wait_done(browser) == "error"
    assert browser.find_element("id", "message").text.startswith(message)


def test_min_p_and_the_unknown_token_from_the_address(browser, site):
    base, runs = site
    sampler = Sampler.load(runs["folded"], backend="numpy")
    query = dict(prompt="The ž cat", seed=9, length=150, temperature=1.3, min_p=0.05, unknown="unk")
    open_page(browser, base, "folded", query)
    assert wait_done(browser) == "true"
    assert browser.find_element("id", "unknown-label").is_displayed()
    want = sampler.generate("The ž cat", seed=9, length=150, temperature=1.3, min_p=0.05, unknown="unk")
    assert _text(browser) == want
    open_page(browser, base, "lstm")
    until(lambda: not browser.find_element("id", "generate").get_property("disabled"))
    assert not browser.find_element("id", "unknown-label").is_displayed()  # no unknown token: no choice


def test_a_long_stream_keeps_few_text_nodes_and_stops_at_once(browser, site):
    base, _ = site
    open_page(browser, base, "gru", dict(seed=1, length=10**9))
    until(lambda: len(_text(browser)) > 30_000)
    clicked = time.monotonic()
    browser.find_element("id", "stop-button").click()
    assert wait_done(browser) == "stopped"
    assert time.monotonic() - clicked < 3
    count = len(_text(browser))
    nodes = browser.execute_script("return document.getElementById('output').childNodes.length")
    assert nodes < count / 20, (nodes, count)


def test_a_missing_module_a_broken_model_json_and_a_file_address_are_said_on_the_page(browser, site):
    import shutil

    base, runs = site
    root = runs["lstm"].parent.parent / "site"
    for name in ("nojs", "badjson"):
        shutil.rmtree(root / name, ignore_errors=True)
        shutil.copytree(root / "lstm", root / name)
    (root / "nojs" / "chargen.js").unlink()
    (root / "badjson" / "model.json").write_text("{chargen")
    open_page(browser, base, "nojs", dict(seed=1))
    assert wait_done(browser) == "error"
    assert browser.find_element("id", "message").text.startswith("cannot load the model: ")
    open_page(browser, base, "badjson", dict(seed=1))
    assert wait_done(browser) == "error"
    assert browser.find_element("id", "message").text.startswith("cannot load the model: model.json cannot be read (")
    browser.get((root / "lstm" / "index.html").as_uri() + "?seed=1")
    assert wait_done(browser) == "error"
    assert browser.find_element("id", "message").text.endswith(
        "(open the page through a web server: python -m http.server)"
    )


def test_sha256_is_hashlibs(browser, site):
    base, _ = site
    open_page(browser, base, "gru")
    rng = np.random.default_rng(1)
    blobs = [bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in (0, 1, 55, 56, 63, 64, 65, 1000, 100_003)]
    code = (
        "return args[0].map((hex) => { const b = Uint8Array.from(hex.match(/../g) || [], (x) => parseInt(x, 16));"
        "return Array.from(m.sha256(b), (v) => v.toString(16).padStart(2, '0')).join(''); });"
    )
    assert js(browser, code, [b.hex() for b in blobs]) == [hashlib.sha256(b).hexdigest() for b in blobs]


def test_the_module_refuses_a_bad_signal_and_a_list_of_options(browser, site):
    base, _ = site
    open_page(browser, base, "gru")
    code = (
        "const out = []; for (const o of args[0]) { try { model.stream('the', o); out.push('accepted'); }"
        "catch (e) { out.push(e.message); } } return out;"
    )
    assert js(browser, code, [dict(signal="nope"), [1, 2]]) == [
        "signal must be an AbortSignal (new AbortController().signal)",
        "options must be an object, such as { length: 300, seed: 1 }",
    ]


def test_an_export_inside_the_run_and_a_file_for_a_run_are_refused(cli, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(GOLDEN, run)
    for target in (run / "web", run, run / "last" / "x"):
        code, _, err = cli("export", str(run), "--web", str(target))
        assert (code, err) == (
            2,
            f"chargen export: error: {target} is inside the run folder {run}; choose a folder outside the run for "
            "the export\n",
        )
    code, _, err = cli("export", str(run / "config.json"), "--web", str(tmp_path / "w"))
    assert (code, err) == (
        2,
        f"chargen export: error: {run / 'config.json'} is a file, not a run folder; give the folder chargen train "
        "--out wrote\n",
    )
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in GOLDEN.iterdir())


def test_a_signal_during_the_renames_waits_for_them_and_a_killed_exports_stage_is_removed(tmp_path):
    import os
    import subprocess
    import sys

    code = (
        "import os, signal, sys\nfrom chargen.cli import entry\nreal = os.replace; n = [0]\n"
        "def replace(a, b):\n    real(a, b); n[0] += 1\n"
        "    if n[0] == 2: os.kill(os.getpid(), signal.SIGTERM)\n"
        "os.replace = replace\n"
        f"sys.argv = ['chargen', 'export', {str(GOLDEN)!r}, '--web', {str(tmp_path / 'x')!r}]\nsys.exit(entry.main())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("exported "), done.stderr
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == sorted(FILES)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / "x" / f".chargen-export-{gone.pid}-abc"
    alive = tmp_path / "x" / f".chargen-export-{os.getpid()}-def"  # a live process's stage stays
    for stage in (dead, alive):
        stage.mkdir()
        (stage / "model.safetensors").write_bytes(b"partial")
    export_web(GOLDEN, tmp_path / "x", overwrite=True)
    assert not dead.exists() and alive.exists()
