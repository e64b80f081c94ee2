"""Shared fixtures: an isolated cache, the shared test corpora, a CLI runner; a live server (LiveServer)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from chargen.cli import main

REPO = Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO / "tests" / "fixtures" / "golden"  # a run written by an earlier chargen: see its README
HOSTILE = (
    "plain ascii, then  two spaces\n\ttab\r\nCRLF\n"
    "日本語のテキスト 中文 한국어\n"
    "emoji 😀🎉👩‍👩‍👧 flags 🇫🇷\n"
    "combining: e\u0301 a\u0308 n\u0303 (decomposed) é ä ñ (precomposed)\n"
    "zero width \u200b joiner \u200d nbsp \u00a0 bom \ufeff rtl \u05e9\u05dc\u05d5\u05dd\n"
    "<unk> is just text here\n"
)


def shared_corpora() -> Path | None:
    """The folder holding tinyshakespeare.txt: $CHARGEN_CORPORA or ../shared/corpora."""
    for d in os.environ.get("CHARGEN_CORPORA", "").split(os.pathsep) + [str(REPO.parent / "shared" / "corpora")]:
        if d and (Path(d) / "tinyshakespeare.txt").is_file():
            return Path(d)
    return None


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache, and downloads are off unless a test turns them on. ``--precision auto``
    means fp32 on every CPU (a test of the bf16 rule sets CHARGEN_CPU_BF16=1 itself), so that results do
    not depend on whether the machine has native bf16."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CHARGEN_CACHE", str(cache))
    monkeypatch.setenv("CHARGEN_OFFLINE", "1")
    monkeypatch.setenv("CHARGEN_CPU_BF16", "0")
    return cache


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped where torch sees no CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def cpu_unless_marked_gpu(request, monkeypatch):
    """On a machine with a GPU, ``--device auto`` would pick it, and tests written for the CPU would compare
    CPU figures with CUDA ones. Every test not marked ``gpu`` sees no CUDA device: torch.cuda.is_available()
    is False in this process and CUDA_VISIBLE_DEVICES is empty for the processes it starts."""
    if request.node.get_closest_marker("gpu"):
        return
    import torch

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# A small model's training options for tests that train (steps are milliseconds on a CPU).
TINY = dict(
    num_layers=1,
    hidden_size=32,
    batch_size=8,
    bptt=16,
    lr=1e-2,
    warmup_steps=0,
    preview_chars=0,
    eval_every=20,
    log_every=10,
)


@pytest.fixture
def text_file(tmp_path) -> Path:
    """About 20k characters of text with structure a small model learns fast."""
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "its", "home"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) + "." for _ in range(800)]
    p = tmp_path / "small.txt"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory) -> Path:
    """A copy of the golden run (tests/fixtures/golden/run), one per test module."""
    d = tmp_path_factory.mktemp("golden")
    shutil.copytree(GOLDEN_DIR / "run", d / "run")
    return d / "run"


@pytest.fixture
def corpora_dir() -> Path:
    d = shared_corpora()
    if d is None:
        pytest.skip("tinyshakespeare.txt not found (set CHARGEN_CORPORA or put ../shared/corpora beside the repo)")
    return d


@pytest.fixture
def cli(capsys):
    """Run ``chargen ARGS`` in-process; returns (exit status, stdout, stderr)."""

    def run(*args: str):
        capsys.readouterr()  # only this command's output
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse exits on usage errors and --help
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


class LiveServer:
    """``chargen serve``'s app on 127.0.0.1 on a free port, in a thread (needs the serve extra).
    ``sampler`` defaults to the run's, loaded here; the rest goes to ``create_app``."""

    def __init__(self, run: Path, sampler=None, **kwargs):
        import uvicorn

        from chargen import Sampler
        from chargen.serve.app import create_app

        self.sampler = sampler or Sampler.load(run, backend="torch")
        self.app = create_app(self.sampler, "golden", **kwargs)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


class SlowStep:
    """A sampler's batched step (``Sampler.fast_step``), delayed: a server decodes slowly enough to be seen
    streaming and stopped mid-way. The texts are unchanged. Defined here, not in a test file, so that it
    pickles into a decoding process of its own."""

    def __init__(self, step, delay: float):
        self.step, self.delay = step, delay

    def __call__(self, *args, **kwargs):
        time.sleep(self.delay)
        return self.step(*args, **kwargs)

    def __getattr__(self, name):  # the rest of the step's interface (to_fast)
        if name.startswith("__") or name == "step":
            raise AttributeError(name)
        return getattr(self.step, name)


class FailingStep:
    """A sampler's batched step that raises on its ``at``-th call, as an out-of-memory error would
    (picklable into a decoding process, like SlowStep)."""

    def __init__(self, step, at: int):
        self.step, self.at, self.calls = step, at, 0

    def __call__(self, ids, state):
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("out of memory (a test)")
        return self.step(ids, state)

    def to_fast(self, state):
        return self.step.to_fast(state)


def until(condition, timeout: float = 30.0):
    """``condition()``'s first true value, polled; an AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not true within {timeout} s")


def one_error_line(err: str, *fragments: str):
    """``err`` is one line, no traceback, holding every fragment: the CLI's way of saying what went wrong."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], lines[0]


def serve_process(run: Path, *extra: str, new_session: bool = False, env: dict | None = None):
    """``chargen serve RUN`` in a process of its own on a free port, answering /health: (process, url);
    ``env``: its environment (this one's by default)."""
    import subprocess
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "chargen", "serve", str(run), "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return proc, url


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium (Debian's chromium and chromedriver, through selenium), or a skip saying what is
    missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (a dev dependency)")
    from selenium.webdriver.chrome.service import Service

    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        missing = "chromium" if chromium is None else "chromedriver"
        pytest.skip(f"no {missing} on PATH (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1100,1100",
        "--disable-extensions",
        "--no-first-run",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_script_timeout(10)
    yield driver
    driver.quit()
