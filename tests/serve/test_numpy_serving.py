"""``chargen serve --backend numpy`` (issue 33, item 4): the server on the NumPy backend, in process and as the
torch-free install runs it, giving the NumPy sampler's texts."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

openai = pytest.importorskip("openai", reason="the openai client is a dev dependency")
pytest.importorskip("uvicorn", reason="chargen[serve] is not installed")
httpx = pytest.importorskip("httpx")

from chargen import Sampler  # noqa: E402
from chargen.serve.batcher import Batcher  # noqa: E402
from chargen.serve.process_batcher import ProcessBatcher  # noqa: E402
from conftest import REPO, LiveServer, serve_process  # noqa: E402


@pytest.fixture(scope="module")
def sampler(golden_run: Path) -> Sampler:
    return Sampler.load(golden_run, backend="numpy")


@pytest.mark.parametrize("kind", [Batcher, ProcessBatcher])
def test_the_batcher_on_numpy_gives_each_request_the_samplers_text(sampler, kind):
    batcher = kind(sampler, max_batch=6)
    asks = [
        dict(prompt="the ", length=60, seed=1),
        dict(prompt="a", length=40, seed=2, n=3, temperature=0.7, top_k=5),
        dict(prompt="", length=50, seed=3, stop=("e",), presence_penalty=1.0),
        dict(prompt="and ", length=30, seed=4, temperature=0),
        dict(prompt="the ", length=45, seed=5, min_p=0.5, repetition_penalty=1.4, logit_bias={"t": -100}),
    ]
    try:
        submitted = [batcher.submit(a.pop("prompt"), **a) for a in [dict(x) for x in asks]]
        got = [r.texts(timeout=120) for r in submitted]
    finally:
        batcher.close()
    for a, texts in zip(asks, got):
        want = sampler.generate(a.pop("prompt"), **a)
        assert texts == (want if isinstance(want, list) else [want])


def test_logprobs_on_numpy_are_the_models_own(sampler, golden_run):
    server = LiveServer(golden_run, sampler=sampler)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
        r = client.completions.create(model="golden", prompt="the ", max_tokens=20, seed=3, logprobs=2)
        choice = r.choices[0]
        assert choice.text == sampler.generate("the ", length=20, seed=3, temperature=1.0)
        scored = sampler.score("the " + choice.text).logprobs[4:]
        assert choice.logprobs.token_logprobs == pytest.approx(scored.tolist(), abs=1e-4)
        assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    finally:
        server.stop()


def test_the_torch_free_install_serves_on_numpy(golden_run, sampler, tmp_path):
    """Every process of the server (the decoding process too) with torch unimportable: the same texts."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text("import sys\nsys.modules['torch'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc, url = serve_process(golden_run, env=env)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        r = client.completions.create(model=golden_run.name, prompt="the ", max_tokens=50, seed=8, n=2)
        assert [c.text for c in r.choices] == sampler.generate("the ", length=50, seed=8, n=2, temperature=1.0)
        chunks = client.completions.create(model=golden_run.name, prompt="a", max_tokens=30, seed=1, stream=True)
        assert "".join(c.choices[0].text for c in chunks) == sampler.generate("a", length=30, seed=1, temperature=1.0)
        assert "chargen_generated_characters_total 130.0" in httpx.get(url + "/metrics").text
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "chargen serve: stopped" in err and "Traceback" not in err
