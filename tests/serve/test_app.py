"""chargen serve (issue 11): a live server on 127.0.0.1, driven with the official openai client and raw HTTP."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai", reason="the openai client is a dev dependency")
uvicorn = pytest.importorskip("uvicorn", reason="chargen[serve] is not installed")
httpx = pytest.importorskip("httpx")

from chargen import Sampler  # noqa: E402
from chargen.serve.app import Limits  # noqa: E402
from conftest import FailingStep, LiveServer, SlowStep, serve_process  # noqa: E402

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def run(golden_run) -> Path:
    return golden_run


@pytest.fixture(scope="module")
def server(run):
    s = LiveServer(run, api_key=KEY, limits=Limits(max_body=4096, max_length=1000, max_queued=64), run_dir=run)
    yield s
    s.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_a_completion_is_what_the_sampler_generates(client, server):
    r = client.completions.create(model="golden", prompt="the ", max_tokens=80, temperature=0.8, seed=7)
    want = server.sampler.generate("the ", length=80, temperature=0.8, seed=7)
    assert r.choices[0].text == want and r.choices[0].finish_reason == "length"
    assert r.object == "text_completion" and r.model == "golden" and r.id.startswith("cmpl-")
    assert r.usage.prompt_tokens == 4 and r.usage.completion_tokens == 80 and r.usage.total_tokens == 84


def test_a_streamed_completion_joins_to_the_same_text(client, server):
    stream = client.completions.create(model="golden", prompt="and ", max_tokens=60, seed=3, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks)
    assert text == server.sampler.generate("and ", length=60, temperature=1.0, seed=3)
    assert len(chunks) >= 2 and chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize("interval", [0.0, 0.1])
def test_stream_interval_sets_how_often_a_stream_writes(run, interval):
    sampler = Sampler.load(run, backend="torch")
    want = sampler.generate("the ", length=150, seed=4)
    sampler.fast_step = SlowStep(sampler.fast_step, 0.004)  # about 0.6 s for 150 characters
    s = LiveServer(run, sampler=sampler, decode_process=False, stream_interval=interval)
    try:
        start = time.monotonic()
        with httpx.stream(
            "POST",
            s.url + "/v1/completions",
            timeout=60,
            json={"prompt": "the ", "max_tokens": 150, "seed": 4, "stream": True},
        ) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        took = time.monotonic() - start
    finally:
        s.stop()
    assert "".join(c["choices"][0]["text"] for c in chunks) == want
    texts = [c for c in chunks if c["choices"][0]["text"]]
    if interval == 0:
        assert len(texts) >= 100  # about one a step
    else:
        assert 2 <= len(texts) <= took / interval + 2


def test_n_several_prompts_stops_and_echo(client, server):
    r = client.completions.create(
        model="golden",
        prompt=["the ", "a"],
        max_tokens=50,
        n=3,
        seed=11,
        stop=["e", "\n"],
        top_p=0.9,
        echo=True,
        extra_body={"top_k": 20},
    )
    assert [c.index for c in r.choices] == list(range(6))
    for i, c in enumerate(r.choices):
        prompt = ["the ", "a"][i // 3]
        want = server.sampler.generate(
            prompt, length=50, temperature=1.0, seed=11 + i % 3, stop=("e", "\n"), top_p=0.9, top_k=20
        )
        assert c.text == prompt + want
        assert c.finish_reason == ("stop" if len(want) < 50 else "length")
    assert any(c.finish_reason == "stop" for c in r.choices)


def test_the_same_seed_gives_the_same_text_and_no_seed_varies(client):
    a = client.completions.create(model="golden", prompt="th", max_tokens=40, seed=99).choices[0].text
    b = client.completions.create(model="golden", prompt="th", max_tokens=40, seed=99).choices[0].text
    c = {client.completions.create(model="golden", prompt="th", max_tokens=40).choices[0].text for _ in range(3)}
    assert a == b and len(c) > 1


def test_errors_surface_as_the_clients_exceptions(client, server):
    with pytest.raises(openai.BadRequestError, match="not in the vocabulary"):
        client.completions.create(model="golden", prompt="\u2603", max_tokens=5)
    with pytest.raises(openai.NotFoundError, match="is not served here"):
        client.completions.create(model="gpt-4", prompt="the", max_tokens=5)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).completions.create(
            model="golden", prompt="the", max_tokens=5
        )
    assert client.completions.create(model="golden", prompt="the", max_tokens=5, seed=1).choices[0].text


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list()] == ["golden"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


BAD = [
    ("malformed JSON", b"{not json", 400, None),
    ("a JSON array", b"[1, 2]", 400, None),
    ("prompt of a wrong type", {"prompt": 5}, 400, "prompt"),
    ("an empty prompt list", {"prompt": []}, 400, "prompt"),
    ("negative max_tokens", {"prompt": "a", "max_tokens": -1}, 400, "max_tokens"),
    ("huge max_tokens", {"prompt": "a", "max_tokens": 10**9}, 400, "max_tokens"),
    ("max_tokens as text", {"prompt": "a", "max_tokens": "5"}, 400, "max_tokens"),
    ("n = 0", {"prompt": "a", "n": 0}, 400, "n"),
    ("negative temperature", {"prompt": "a", "temperature": -0.5}, 400, "temperature"),
    ("top_p above 1", {"prompt": "a", "top_p": 1.5}, 400, "top_p"),
    ("top_p of 0", {"prompt": "a", "top_p": 0}, 400, "top_p"),
    ("an unknown field", {"prompt": "a", "colour": "blue"}, 400, "colour"),
    ("an unsupported OpenAI field", {"prompt": "a", "suffix": "x"}, 400, "suffix"),
    ("stop of a wrong type", {"prompt": "a", "stop": 3}, 400, "stop"),
    ("five stops", {"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("stream as text", {"prompt": "a", "stream": "yes"}, 400, "stream"),
    ("a seed too large", {"prompt": "a", "seed": 2**64}, 400, "seed"),
    ("an unknown character", {"prompt": "\u2603"}, 400, "prompt"),
    ("an oversize body", {"prompt": "a" * 10000}, 413, None),
    ("another model", {"prompt": "a", "model": "other"}, 404, "model"),
    ("negative logprobs", {"prompt": "a", "logprobs": -1}, 400, "logprobs"),
    ("too many logprobs", {"prompt": "a", "logprobs": 6}, 400, "logprobs"),
    (
        "logprobs for too many characters",
        {"prompt": ["a"] * 5, "n": 16, "max_tokens": 1000, "logprobs": 1},
        400,
        "logprobs",
    ),
    ("logprobs as true", {"prompt": "a", "logprobs": True}, 400, "logprobs"),
    ("logprobs with echo", {"prompt": "a", "logprobs": 2, "echo": True}, 400, "logprobs"),
    ("JSON nested too deeply", b"[" * 4000, 400, None),
    ("a 400-digit max_tokens", b'{"prompt": "a", "max_tokens": ' + b"9" * 400 + b"}", 400, "max_tokens"),
    ("a 400-digit temperature", b'{"prompt": "a", "temperature": ' + b"9" * 400 + b"}", 400, "temperature"),
    ("a field named by a lone surrogate", b'{"prompt": "a", "\\ud800": 1}', 400, "\ud800"),
    ("more rows than are ever decoded", {"prompt": ["a"] * 8, "n": 9}, 400, "n"),
    (
        "stream_options without stream",
        {"prompt": "a", "stream_options": {"include_usage": True}},
        400,
        "stream_options",
    ),
    (
        "stream_options of a wrong shape",
        {"prompt": "a", "stream": True, "stream_options": {"x": 1}},
        400,
        "stream_options",
    ),
    ("user not a string", {"prompt": "a", "user": 5}, 400, "user"),
]


@pytest.mark.parametrize("name,body,status,param", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_an_openai_error_and_the_server_goes_on(server, name, body, status, param):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server.url + "/v1/completions", content=data, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["param"] == param
    ok = httpx.post(server.url + "/v1/completions", json={"prompt": "the", "max_tokens": 3}, headers=headers)
    assert ok.status_code == 200


def test_a_lone_surrogate_is_text_like_any_other(server):
    """Half an emoji (as JavaScript slices text) in a stop is a stop that never matches, and in a scored text a
    character the vocabulary lacks: said as such, not as an empty string."""
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    plain = {"prompt": "the", "max_tokens": 12, "seed": 4}
    want = httpx.post(server.url + "/v1/completions", json=plain, headers=headers).json()["choices"][0]["text"]
    for stop in (b'"\\ud800"', b'["x", "\\udfff"]', b'"a\\ud83d"'):
        body = json.dumps(plain).encode()[:-1] + b', "stop": ' + stop + b"}"
        r = httpx.post(server.url + "/v1/completions", content=body, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == (want.split("x")[0] if b"x" in stop else want)
    r = httpx.post(server.url + "/v1/score", content=b'{"text": "a\\ud800b"}', headers=headers, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "text"
    assert "not in the vocabulary" in r.json()["error"]["message"]


def test_keys_routes_and_methods(server):
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}x"}).status_code == 401
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer sk-test"}).status_code == 401
    r = httpx.get(server.url + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}).status_code == 405
    # without the key, /v1 says nothing of which routes exist
    assert httpx.get(server.url + "/v1/nothing").status_code == 401
    assert httpx.get(server.url + "/v1/completions").status_code == 401
    r = httpx.get(server.url + "/v1/models/", headers={"Authorization": f"Bearer {KEY}"})  # no redirect
    assert r.status_code == 404 and "error" in r.json()
    assert httpx.get(server.url + "/health").status_code == 200  # no key needed
    assert httpx.get(server.url + "/nothing").status_code == 404


def test_a_body_that_is_not_json_by_its_type_is_refused(server):
    """A web page elsewhere can send text/plain without the browser asking the server first; not JSON."""
    for kind in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Authorization": f"Bearer {KEY}"} | ({"Content-Type": kind} if kind else {})
        r = httpx.post(server.url + "/v1/completions", content=b'{"prompt": "a"}', headers=headers)
        assert r.status_code == 415 and "Content-Type: application/json" in r.json()["error"]["message"]
    r = httpx.post(
        server.url + "/v1/completions",
        content=b'{"prompt": "a", "max_tokens": 2}',
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 200


def test_on_a_loopback_address_only_requests_naming_this_machine_are_answered(run):
    s = LiveServer(run, decode_process=False, allowed_hosts={"localhost", "127.0.0.1", "::1"})
    try:
        for host in ("127.0.0.1", f"127.0.0.1:{s.port}", f"localhost:{s.port}", "[::1]:80"):
            assert httpx.get(s.url + "/v1/models", headers={"Host": host}).status_code == 200, host
        for host in ("attacker.example", f"attacker.example:{s.port}", "127.0.0.1.attacker.example"):
            r = httpx.get(s.url + "/v1/models", headers={"Host": host})
            assert r.status_code == 400 and "addressed to this machine" in r.json()["error"]["message"], host
    finally:
        s.stop()


def test_a_client_that_leaves_before_its_answer_frees_its_rows(run):
    sampler = Sampler.load(run, backend="torch")
    sampler.fast_step = SlowStep(sampler.fast_step, 0.01)  # 1,000 characters: 10 s
    s = LiveServer(run, sampler=sampler)
    try:
        body = json.dumps({"prompt": ["a"] * 4, "n": 4, "max_tokens": 1000}).encode()
        with socket.create_connection(("127.0.0.1", s.port)) as raw:
            raw.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            time.sleep(0.5)
            assert httpx.get(s.url + "/health").json()["active"] == 16  # decoding, not done
        left = time.monotonic()
        while httpx.get(s.url + "/health").json()["active"] and time.monotonic() - left < 10:
            time.sleep(0.05)
        assert httpx.get(s.url + "/health").json()["active"] == 0 and time.monotonic() - left < 2
    finally:
        s.stop()


def test_a_score_whose_client_left_is_skipped(run, monkeypatch):
    sampler = Sampler.load(run, backend="torch")
    score = sampler.score

    def slow_score(text, *args):
        time.sleep(1.0)
        return score(text, *args)

    monkeypatch.setattr(sampler, "score", slow_score)
    s = LiveServer(run, sampler=sampler, decode_process=False)
    try:
        body = b'{"text": "the cat"}'
        request = (
            b"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        gone = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(4)]
        for raw in gone:
            raw.sendall(request)
        time.sleep(0.3)
        for raw in gone:  # one is being scored; three wait, and are dropped
            raw.close()
        start = time.monotonic()
        r = httpx.post(s.url + "/v1/score", json={"text": "the"}, timeout=30)
        assert r.status_code == 200 and time.monotonic() - start < 2.8  # not behind 3 abandoned scores
    finally:
        s.stop()


@pytest.mark.parametrize(
    "header,name",
    [
        ("127.0.0.1:80", "127.0.0.1"),
        ("LocalHost", "localhost"),
        ("[::1]:8000", "::1"),
        ("[::1]", "::1"),
        ("[::1]evil.com", "[::1]evil.com"),
        ("localhost:80x", "localhost:80x"),
        ("a:b:c", "a:b:c"),
        ("", ""),
    ],
)
def test_host_names(header, name):
    from chargen.serve.app import _host_name

    assert _host_name(header) == name


def test_a_route_without_a_body_says_405_not_415(server):
    r = httpx.post(server.url + "/v1/models", content=b"x", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 405


def test_stream_options_include_usage_ends_with_a_usage_chunk(client):
    chunks = list(
        client.completions.create(
            model="golden",
            prompt="the ",
            max_tokens=30,
            n=2,
            seed=1,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert (
        last.choices == []
        and last.usage.prompt_tokens == 8
        and last.usage.completion_tokens == sum(len(c.choices[0].text) for c in chunks[:-1])
        and last.usage.total_tokens == 8 + last.usage.completion_tokens
    )
    assert all(c.usage is None for c in chunks[:-1])


def test_a_client_that_drops_mid_stream_frees_its_rows(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream(
        "POST",
        server.url + "/v1/completions",
        headers=headers,
        timeout=30,
        json={"prompt": "the ", "max_tokens": 1000, "stream": True, "n": 4},
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # gone, mid-stream
    deadline = time.monotonic() + 20
    while httpx.get(server.url + "/health").json()["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(server.url + "/health").json()["active"] == 0


def test_concurrent_clients_each_get_their_own_text(client, server):
    results = {}

    def one(i):
        results[i] = (
            client.completions.create(
                model="golden", prompt="the ", max_tokens=30 + 7 * i, seed=i, temperature=0.5 + 0.1 * (i % 5)
            )
            .choices[0]
            .text
        )

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for i in range(12):
        assert results[i] == server.sampler.generate("the ", length=30 + 7 * i, seed=i, temperature=0.5 + 0.1 * (i % 5))


def test_serve_without_the_extra_is_one_line(cli, run, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_uvicorn(name, *args, **kwargs):
        if name == "uvicorn":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvicorn)
    code, _, err = cli("serve", run, "--port", "0")
    assert (
        code == 2
        and err.strip().splitlines()[-1]
        == 'chargen serve: error: chargen serve needs its extra: pip install "chargen[serve]" (or '
        '"chargen[serve-numpy]" without torch)'
    )


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--port", "70000"], "argument --port: must be in [0, 65535], got 70000"),
        (["--port", "http"], "argument --port: expected a whole number"),
        (["--max-batch", "0"], "argument --max-batch: must be in [1, 1048576]"),
    ],
)
def test_serve_flag_mistakes_are_one_line(cli, run, args, fragment):
    code, _, err = cli("serve", run, *args)
    assert code == 2 and fragment in err.strip().splitlines()[-1] and "Traceback" not in err


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_score_is_the_samplers(server):
    r = httpx.post(server.url + "/v1/score", json={"text": "the cat", "logprobs": True}, headers=AUTH)
    want = server.sampler.score("the cat")
    body = r.json()
    assert r.status_code == 200 and body["chars"] == 7 == want.count
    assert body["nats"] == pytest.approx(want.nats) and body["bpc"] == pytest.approx(want.bpc)
    assert body["logprobs"] == pytest.approx([float(x) for x in want.logprobs], abs=1e-6)
    assert "logprobs" not in httpx.post(server.url + "/v1/score", json={"text": "the"}, headers=AUTH).json()


@pytest.mark.parametrize(
    "body,param",
    [
        ({"text": ""}, "text"),
        ({"text": 5}, "text"),
        ({}, "text"),
        ({"text": "\u2603"}, "text"),
        ({"text": "a", "extra": 1}, "extra"),
        ({"text": "a", "logprobs": "yes"}, "logprobs"),
    ],
)
def test_bad_score_requests(server, body, param):
    r = httpx.post(server.url + "/v1/score", json=body, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_run_summary_has_the_curves_and_sizes(server, run):
    body = httpx.get(server.url + "/v1/run", headers=AUTH).json()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert body["val_bpc"] == [[r["step"], r["val_bpc"]] for r in rows if "val_bpc" in r] and body["val_bpc"]
    assert body["train_loss"] and body["parameters"] > 0 and body["corpus"]["vocab_size"] > 0
    assert body["model"]["cell"] in ("lstm", "gru") and body["object"] == "run" and body["name"] == "golden"
    assert httpx.get(server.url + "/v1/run").status_code == 401


@pytest.mark.parametrize("decode_process", [True, False], ids=["process", "thread"])
def test_a_failing_decoding_loop_is_a_server_error_not_a_hang(run, decode_process):
    sampler = Sampler.load(run, backend="torch")
    sampler.fast_step = FailingStep(sampler.fast_step, at=30)
    s = LiveServer(run, sampler=sampler, decode_process=decode_process)
    try:
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "the ", "max_tokens": 500}, timeout=60)
        assert r.status_code == 500
        error = r.json()["error"]
        assert error["type"] == "server_error" and "out of memory (a test)" in error["message"]
        health = httpx.get(s.url + "/health", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "error"
        assert "out of memory (a test)" in health.json()["error"]
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "the ", "max_tokens": 5}, timeout=60)
        assert r.status_code == 503 and "out of memory" in r.json()["error"]["message"]
        assert httpx.get(s.url + "/v1/models", timeout=10).status_code == 200  # the rest still answers
    finally:
        s.stop()


def test_a_failing_decoding_loop_ends_a_stream_with_an_error_event(run):
    sampler = Sampler.load(run, backend="torch")
    sampler.fast_step = FailingStep(sampler.fast_step, at=30)
    s = LiveServer(run, sampler=sampler)
    try:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=60)
        text = ""
        with pytest.raises(openai.APIError, match="the decoding loop failed"):
            for chunk in client.completions.create(model="golden", prompt="the ", max_tokens=500, stream=True):
                text += chunk.choices[0].text
        assert 0 < len(text) < 500  # what came before the failure
        with pytest.raises(openai.APIStatusError, match="stopped: RuntimeError: out of memory") as e:
            client.completions.create(model="golden", prompt="the ", max_tokens=5, stream=True)
        assert e.value.status_code == 503
    finally:
        s.stop()


def test_a_taken_or_foreign_address_is_one_line_before_the_model_loads(cli, run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = cli("serve", run, "--port", str(port))
    assert code == 2 and err.strip().splitlines() == [
        f"chargen serve: error: cannot listen on 127.0.0.1:{port}: Address already in use; "
        "choose another --host or --port"
    ]
    code, _, err = cli("serve", run, "--host", "192.0.2.1", "--port", "0")  # TEST-NET-1: never this machine's
    assert code == 2 and err.strip().splitlines()[-1].startswith("chargen serve: error: cannot listen on 192.0.2.1:0")


def _children(pid: int) -> list[int]:
    try:
        return [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc")
@pytest.mark.parametrize("sig,group", [("SIGINT", False), ("SIGTERM", False), ("SIGTERM", True), ("SIGHUP", True)])
def test_ctrl_c_or_sigterm_stops_the_server_cleanly(run, sig, group):
    """Running streams get a few seconds, then end with an error event; the process says so and exits 0;
    its decoding process is gone."""
    import signal

    proc, url = serve_process(run, "--max-length", "100000", new_session=group)
    try:
        decoders = _children(proc.pid)
        assert decoders
        results = {}

        def stream(i: int) -> None:  # long enough to outlast the grace period
            with httpx.stream(
                "POST",
                url + "/v1/completions",
                timeout=60,
                json={"prompt": "the ", "max_tokens": 100000, "stream": True, "seed": i},
            ) as r:
                results[i] = [line for line in r.iter_lines() if line.startswith("data: ")]

        clients = [threading.Thread(target=stream, args=(i,)) for i in range(40)]
        for c in clients:
            c.start()
        time.sleep(1.0)
        if group:  # as systemd, a closed terminal or `timeout` do: the decoding process gets it too
            os.killpg(proc.pid, getattr(signal, sig))
        else:
            proc.send_signal(getattr(signal, sig))
        _out, err = proc.communicate(timeout=30)
        for c in clients:
            c.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert err.splitlines()[-1] == "chargen serve: stopped" and "Traceback" not in err and "ERROR" not in err
    assert "decoding" not in err, err
    assert len(results) == 40
    for lines in results.values():  # each stream either finished or was told why it ends
        last = lines[-1]
        assert last == "data: [DONE]" or json.loads(last[6:])["error"]["message"].startswith(
            "the server is shutting down"
        )
    assert any(lines[-1] != "data: [DONE]" for lines in results.values())
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in decoders) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(pid) for pid in decoders)


def _check_logprobs(sampler, prompt: str, text: str, lp: dict, k: int) -> None:
    """One choice's logprobs: a token per character, each the model's own log-probability (as /v1/score and
    Sampler.score give it), the k likeliest characters in order, offsets counting characters."""
    assert "".join(lp["tokens"]) == text and lp["text_offset"] == list(range(len(text)))
    want = [float(x) for x in sampler.score(prompt + text).logprobs[len(prompt) :]] if text else []
    assert lp["token_logprobs"] == pytest.approx(want, abs=1e-4)
    assert len(lp["top_logprobs"]) == len(text)
    for char, drawn, top in zip(text, lp["token_logprobs"], lp["top_logprobs"]):
        values = list(top.values())
        assert len(top) == k and values == sorted(values, reverse=True)
        assert sum(math.exp(v) for v in values) <= 1 + 1e-6
        if char in top:
            assert top[char] == pytest.approx(drawn, abs=1e-6)
        elif k:
            assert drawn <= values[-1] + 1e-6


def test_logprobs_are_the_models_own_per_character(client, server):
    r = client.completions.create(
        model="golden", prompt="the ", max_tokens=60, temperature=0.9, seed=5, n=2, stop=["e "], logprobs=3
    )
    for i, choice in enumerate(r.choices):
        want = server.sampler.generate("the ", length=60, temperature=0.9, seed=5 + i, stop=("e ",))
        assert choice.text == want  # asking for logprobs does not change the text
        _check_logprobs(server.sampler, "the ", choice.text, choice.logprobs.model_dump(), 3)
    r0 = client.completions.create(model="golden", prompt="a", max_tokens=20, seed=1, logprobs=0)
    _check_logprobs(server.sampler, "a", r0.choices[0].text, r0.choices[0].logprobs.model_dump(), 0)
    assert client.completions.create(model="golden", prompt="a", max_tokens=5, seed=1).choices[0].logprobs is None


def test_streamed_logprobs_join_to_the_whole_ones(client, server):
    whole = client.completions.create(
        model="golden", prompt="and ", max_tokens=80, seed=9, logprobs=2, stop=["th", "\n\n"]
    ).choices[0]
    chunks = list(
        client.completions.create(
            model="golden", prompt="and ", max_tokens=80, seed=9, logprobs=2, stop=["th", "\n\n"], stream=True
        )
    )
    joined = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for c in chunks:
        lp = c.choices[0].logprobs
        assert lp is not None and "".join(lp.tokens) == c.choices[0].text
        for key in joined:
            joined[key] += getattr(lp, key)
    assert "".join(c.choices[0].text for c in chunks) == whole.text
    assert joined == whole.logprobs.model_dump()


def test_run_summary_skips_events_and_non_finite_values_and_says_when_it_cannot_read(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    rows = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    with open(copy / "metrics.jsonl", "a", encoding="utf-8") as f:  # what the trainer writes on a skipped step
        f.write('{"step": 13, "event": "nonfinite", "loss": NaN, "grad_norm": Infinity}\n')
        f.write('{"loss": 2.0}\n{"step": 14, "loss": Infinity}\n')
    s = LiveServer(copy, run_dir=copy, decode_process=False)
    try:
        body = httpx.get(s.url + "/v1/run").json()
        assert body["train_loss"] == [[r["step"], r["loss"]] for r in rows if "loss" in r and "event" not in r]
        assert body["val_bpc"] == [[r["step"], r["val_bpc"]] for r in rows if "val_bpc" in r]
        (copy / "config.json").write_text("{ not json")
        r = httpx.get(s.url + "/v1/run")
        assert r.status_code == 500 and r.json()["error"]["message"].startswith(f"cannot read the run {copy}")
        assert httpx.get(s.url + "/health").status_code == 200
    finally:
        s.stop()


def test_score_checks_the_model(server):
    r = httpx.post(server.url + "/v1/score", json={"text": "the", "model": "other"}, headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    assert (
        httpx.post(server.url + "/v1/score", json={"text": "the", "model": "golden"}, headers=AUTH).status_code == 200
    )


def test_score_over_the_prompt_cap_is_a_400(run):
    s = LiveServer(run, decode_process=False, limits=Limits(max_prompt=100))
    try:
        r = httpx.post(s.url + "/v1/score", json={"text": "a" * 101})
        assert r.status_code == 400 and "at most 100 are scored" in r.json()["error"]["message"]
        assert httpx.post(s.url + "/v1/score", json={"text": "a" * 100}).status_code == 200
    finally:
        s.stop()


@pytest.mark.parametrize(
    "flag,env,fragment",
    [
        (["--api-key", ""], None, "--api-key is empty"),
        (["--api-key", "two words"], None, "--api-key must be printable ASCII without spaces"),
        (["--api-key", "cl\u00e9"], None, "--api-key must be printable ASCII"),
        ([], "", "CHARGEN_API_KEY is empty"),
    ],
)
def test_an_api_key_that_cannot_work_is_one_line(cli, run, monkeypatch, flag, env, fragment):
    if env is not None:
        monkeypatch.setenv("CHARGEN_API_KEY", env)
    code, _, err = cli("serve", run, "--port", "0", *flag)
    assert code == 2 and fragment in err.strip().splitlines()[-1] and "Traceback" not in err
