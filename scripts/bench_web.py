"""Benchmark the browser export in headless Chromium against the NumPy backend, and measure their agreement.

Usage::

    python scripts/bench_web.py                          # a 2x256 LSTM, 5 rounds of 2,000 characters
    python scripts/bench_web.py --sizes 2x256,3x512 --cell gru --rounds 7
    python scripts/bench_web.py --run runs/shakespeare   # also: 20 seeds x 200 characters, page vs NumPy

Speed: for each size, a randomly initialised model over tiny shakespeare's 65 characters (speed does not
depend on the weights) is exported with ``chargen export --web``, served by a static server on 127.0.0.1
and loaded in Debian's headless Chromium (selenium, /usr/bin/chromium). One stream, ``model.generate`` timed
inside the page (performance.now) and ``Sampler.generate`` on the NumPy backend timed here, in turns, each
round with its own seed; the medians over rounds, the ratio, and the plain-JavaScript products (no
WebAssembly) beside them. Both run on this machine's cores; the browser's single thread against NumPy's
BLAS with its threads.

Agreement (``--run``): the run's export against the NumPy backend on the run, 20 seeds x 200 characters at
the default settings and at temperature 1.0 with top-p 0.95: how many samples are identical, and where the
others first differ.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from chargen import Sampler
from chargen.generate.web_export import export_web

PROMPT = "ROMEO:"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A static server of ``folder`` on 127.0.0.1, in a thread; (the server, its URL)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=folder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
    driver.set_script_timeout(600)
    return driver


def in_page(driver, body: str, *args):
    """Run ``body`` (sees ``m``, the module; ``models``, {wasm, plain}; ``args``) in the open page."""
    script = (
        "const done = arguments[arguments.length - 1], args = Array.from(arguments).slice(0, -1);"
        "(async () => { const m = await import('./chargen.js');"
        "window.models ??= {wasm: await m.load('./'), plain: await m.load('./', {wasm: false})};"
        "const models = window.models;" + body + "})().then(done, (e) => done({error: String(e)}));"
    )
    out = driver.execute_async_script(script, *args)
    if isinstance(out, dict) and "error" in out:
        raise RuntimeError(out["error"])
    return out


TIMED = (
    "const model = models[args[0]], t0 = performance.now();"
    "const text = await model.generate(args[1], {length: args[2], seed: args[3]});"
    "return [text.length, (performance.now() - t0) / 1000];"
)


def speed(driver, base: str, run: Path, length: int, rounds: int) -> None:
    sampler = Sampler.load(run, backend="numpy")
    driver.get(f"{base}/index.html")
    sampler.generate(PROMPT, length=200, seed=0)  # warm
    in_page(driver, TIMED, "wasm", PROMPT, 300, 0)
    in_page(driver, TIMED, "plain", PROMPT, 50, 0)
    numpy_rates, wasm_rates, plain_rates = [], [], []
    for r in range(rounds):
        t0 = time.perf_counter()
        sampler.generate(PROMPT, length=length, seed=r)
        numpy_rates.append(length / (time.perf_counter() - t0))
        n, seconds = in_page(driver, TIMED, "wasm", PROMPT, length, r)
        wasm_rates.append(n / seconds)
        n, seconds = in_page(driver, TIMED, "plain", PROMPT, length // 10, r)
        plain_rates.append(n / seconds)
    numpy_c, wasm_c, plain_c = (statistics.median(x) for x in (numpy_rates, wasm_rates, plain_rates))
    print(f"  NumPy backend (Sampler.generate):        {numpy_c:>9,.0f} chars/s")
    print(f"  browser, WebAssembly SIMD (chargen.js):  {wasm_c:>9,.0f} chars/s   {wasm_c / numpy_c:.2f}x NumPy")
    print(f"  browser, plain JavaScript (wasm: false): {plain_c:>9,.0f} chars/s   {plain_c / numpy_c:.2f}x NumPy")
    print(f"  rounds: NumPy {[round(x) for x in numpy_rates]}, wasm {[round(x) for x in wasm_rates]}")


AGREE = "const out = []; for (const o of args[1]) out.push(await models.wasm.generate(args[0], o)); return out;"


def agreement(driver, base: str, run: Path, seeds: int, length: int) -> None:
    sampler = Sampler.load(run, backend="numpy")
    driver.get(f"{base}/index.html")
    for settings in (dict(), dict(temperature=1.0, top_p=0.95)):
        options = [dict(length=length, seed=s, **settings) for s in range(seeds)]
        got = in_page(driver, AGREE, PROMPT, options)
        want = [sampler.generate(PROMPT, **o) for o in options]
        same = sum(g == w for g, w in zip(got, want))
        where = [next(i for i, (a, b) in enumerate(zip(g, w)) if a != b) for g, w in zip(got, want) if g != w]
        print(
            f"  {settings or 'defaults (temperature 0.8)'}: {same} of {seeds} samples of {length} characters "
            f"identical ({100 * same / seeds:.0f}%)" + (f"; the others first differ at {where}" if where else "")
        )


def random_run(cell: str, layers: int, hidden: int, folder: Path) -> Path:
    import torch
    from bench_sample import CHARS, make_run

    from chargen.data.vocab import CharVocab
    from chargen.model.network import CharRNN, ModelConfig

    torch.manual_seed(0)
    vocab = CharVocab.build(CHARS, with_unk=False)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), cell=cell, num_layers=layers, hidden_size=hidden))
    return make_run(model, vocab, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="2x256", help="LAYERSxHIDDEN, comma-separated (default 2x256; '' for none: agreement only)"
    )
    parser.add_argument("--cell", default="lstm", choices=("lstm", "gru"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--length", type=int, default=2000, help="characters per timed call")
    parser.add_argument("--run", type=Path, help="a trained run: measure the page's agreement with NumPy on it")
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    driver = chromium()
    print(
        f"Chromium {driver.capabilities.get('browserVersion')}, headless, this machine's CPU; median of {args.rounds} rounds"
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for size in filter(None, args.sizes.split(",")):
                layers, hidden = (int(x) for x in size.lower().split("x"))
                run = random_run(args.cell, layers, hidden, Path(tmp) / size)
                export_web(run, Path(tmp) / size / "web")
                server, base = serve(Path(tmp) / size / "web")
                print(f"{args.cell.upper()} {layers}x{hidden}, one stream of {args.length} characters:")
                speed(driver, base, run, args.length, args.rounds)
                server.shutdown()
            if args.run is not None:
                export_web(args.run, Path(tmp) / "trained")
                server, base = serve(Path(tmp) / "trained")
                print(f"agreement on {args.run}, the page against the NumPy backend, prompt {PROMPT!r}:")
                agreement(driver, base, args.run, args.seeds, 200)
                server.shutdown()
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
