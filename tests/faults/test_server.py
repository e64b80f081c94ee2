"""Issue 31, items 3 to 5: the server under faults and hostile or unusual clients. Each test is a finding
of the hostile pass (reproduced against a live server on 127.0.0.1), fixed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")
import httpx
import openai

from chargen import SampleOptions
from chargen.serve.app import Limits
from chargen.serve.request import OUTBOX_LIMIT, Request
from conftest import LiveServer, serve_process

KEY = "sk-fault-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(golden_run):
    s = LiveServer(golden_run, api_key=KEY, limits=Limits(max_body=1 << 20, max_length=1000, max_queued=64))
    yield s
    s.stop()


def test_the_bearer_scheme_is_case_insensitive(server):
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"{scheme} {KEY}"}).status_code == 200
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Basic {KEY}"}).status_code == 401
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": KEY}).status_code == 401


def test_chat_completions_says_this_is_a_completions_model(server):
    r = httpx.post(server.url + "/v1/chat/completions", headers=AUTH, json={"model": "x", "messages": []})
    assert r.status_code == 404
    assert "completions API only: POST /v1/completions" in r.json()["error"]["message"]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError, match="completions API only"):
        client.chat.completions.create(model="run", messages=[{"role": "user", "content": "hi"}])


def test_a_model_is_retrieved_by_name(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    name = client.models.list().data[0].id
    got = client.models.retrieve(name)
    assert (got.id, got.object, got.owned_by) == (name, "model", "chargen")
    with pytest.raises(openai.NotFoundError, match="no model 'other'"):
        client.models.retrieve("other")
    assert httpx.get(server.url + "/v1/models/" + name).status_code == 401  # the key, as every /v1 route


def test_an_echoed_value_is_cut_not_sent_back_whole(server):
    """An 800 kB model name came back in a 2.2 MB error body."""
    r = httpx.post(server.url + "/v1/completions", headers=AUTH, json={"model": "x" * 500_000, "prompt": "a"})
    assert r.status_code == 404 and len(r.content) < 2000
    assert "characters cut" in r.json()["error"]["message"]


def test_a_full_server_says_when_to_retry(golden_run):
    s = LiveServer(golden_run, limits=Limits(max_queued=1, max_length=100000))
    try:
        done = threading.Event()

        def hold():
            with httpx.stream(
                "POST",
                s.url + "/v1/completions",
                json={"model": "golden", "prompt": "a", "max_tokens": 100000, "stream": True},
            ) as r:
                for _ in r.iter_lines():
                    if done.is_set():
                        break

        t = threading.Thread(target=hold)
        t.start()
        deadline = time.monotonic() + 30
        while httpx.get(s.url + "/health").json()["active"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        r = httpx.post(s.url + "/v1/completions", json={"model": "golden", "prompt": "b", "max_tokens": 5})
        done.set()
        t.join(30)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
    finally:
        s.stop()


def test_a_consumer_that_stops_taking_is_cancelled_and_holds_only_the_ends():
    """A stream whose client stopped reading kept every event its rows decoded: 256 MB grew to 1.6 GB."""
    r = Request(__import__("numpy").zeros(1, dtype="int64"), SampleOptions(n=2, length=10**6))
    cancelled = []
    r._on_cancel = lambda: cancelled.append(True)
    steps = 0
    while not r.overflowed and steps <= OUTBOX_LIMIT:
        r.deliver([("text", 0, "a"), ("text", 1, "b")])
        steps += 1
    assert r.overflowed and r.cancelled and cancelled == [True]
    assert steps == OUTBOX_LIMIT + 1  # 2 rows: twice OUTBOX_LIMIT events were let wait, not more
    r.deliver([("text", 0, "a"), ("end", 0, "cancelled"), ("end", 1, "cancelled")])
    assert r.take() == [("end", 0, "cancelled"), ("end", 1, "cancelled")]


def test_a_reading_consumer_is_never_cut(golden_run):
    s = LiveServer(golden_run, limits=Limits(max_length=20000))
    try:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=120)
        stream = client.completions.create(model="golden", prompt="a", max_tokens=20000, n=4, seed=1, stream=True)
        text = dict.fromkeys(range(4), "")
        for chunk in stream:
            for c in chunk.choices:
                text[c.index] += c.text
        assert all(len(t) == 20000 for t in text.values())
    finally:
        s.stop()


def test_a_client_that_stops_reading_gets_its_rows_cancelled(golden_run):
    s = LiveServer(golden_run, limits=Limits(max_length=200000))
    try:
        body = json.dumps({"model": "golden", "prompt": "a", "max_tokens": 200000, "n": 4, "stream": True}).encode()
        host, port = s.url.removeprefix("http://").split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )  # and never read
        deadline = time.monotonic() + 60
        seen = 0
        while time.monotonic() < deadline:
            seen = max(seen, httpx.get(s.url + "/health").json()["active"])
            if seen and httpx.get(s.url + "/health").json()["active"] == 0:
                break
            time.sleep(0.1)
        assert seen == 4 and httpx.get(s.url + "/health").json()["active"] == 0  # cancelled long before 200k
        sock.close()
    finally:
        s.stop()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc")
def test_a_killed_decoding_process_fails_open_requests_and_stops_the_server_non_zero(golden_run):
    """The server answered 503 forever after its decoding process was killed; now it fails what was open
    and exits with a message, so a supervisor restarts it."""
    proc, url = serve_process(golden_run, "--max-length", "100000")
    port = int(url.rsplit(":", 1)[1])
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert children
        lines: list[str] = []

        def stream():
            with httpx.stream(
                "POST", url + "/v1/completions", timeout=60, json={"prompt": "a", "max_tokens": 100000, "stream": True}
            ) as r:
                lines.extend(line for line in r.iter_lines() if line.startswith("data: "))

        t = threading.Thread(target=stream)
        t.start()
        time.sleep(1.0)
        for pid in children:
            os.kill(int(pid), signal.SIGKILL)
        t.join(30)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads(lines[-1][6:])["error"]["message"].startswith("the decoding loop failed")
    assert proc.returncode == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"chargen serve: {golden_run} on http://127.0.0.1:{port} (Ctrl-C stops)",
        "chargen serve: error: the decoding loop failed (the decoding process exited, killed by signal 9), so the "
        "server stopped; start it again",
    ]


@pytest.fixture(scope="module")
def open_server(golden_run):
    """No key, room for 200 streams and a long one."""
    s = LiveServer(golden_run, limits=Limits(max_length=50_000, max_queued=256))
    yield s
    s.stop()


@pytest.mark.slow
def test_200_concurrent_streams_each_get_their_own_text(open_server):
    import asyncio

    async def one(client: httpx.AsyncClient, i: int) -> str:
        body = {"model": "golden", "prompt": "the ", "max_tokens": 100, "seed": i, "temperature": 0.8, "stream": True}
        text, done = "", False
        async with client.stream("POST", open_server.url + "/v1/completions", json=body) as r:
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    text += json.loads(line[6:])["choices"][0]["text"]
        assert done
        return text

    async def all_of_them() -> list[str]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            return await asyncio.gather(*(one(client, i) for i in range(200)))

    texts = asyncio.run(all_of_them())
    for i in (0, 57, 199):
        assert texts[i] == open_server.sampler.generate("the ", length=100, seed=i, temperature=0.8)
    assert all(len(t) == 100 for t in texts) and len(set(texts)) > 190
    assert httpx.get(open_server.url + "/health").json()["active"] == 0


def test_slow_clients_holding_connections_do_not_stop_a_normal_request(open_server):
    """Slowloris: 100 connections that send their headers a byte at a time."""
    host, port = open_server.url.removeprefix("http://").split(":")
    socks, stop = [], threading.Event()
    for _ in range(100):
        s = socket.create_connection((host, int(port)))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        socks.append(s)

    def drip():
        while not stop.wait(0.2):
            for s in socks:
                try:
                    s.sendall(b"X")
                except OSError:
                    pass

    dripping = threading.Thread(target=drip, daemon=True)
    dripping.start()
    try:
        began = time.monotonic()
        r = httpx.post(open_server.url + "/v1/completions", json={"model": "golden", "prompt": "a", "max_tokens": 20})
        assert r.status_code == 200 and len(r.json()["choices"][0]["text"]) == 20
        assert time.monotonic() - began < 10
    finally:
        stop.set()
        dripping.join(5)
        for s in socks:
            s.close()


def test_a_maximum_length_request_does_not_hold_the_others_back(open_server):
    """Fairness: while one request decodes 50,000 characters, short ones come back as if it were not there."""
    long_done = threading.Event()

    def long_one():
        httpx.post(
            open_server.url + "/v1/completions",
            json={"model": "golden", "prompt": "a", "max_tokens": 50_000},
            timeout=300,
        )
        long_done.set()

    t = threading.Thread(target=long_one)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while httpx.get(open_server.url + "/health").json()["active"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        for i in range(5):
            began = time.monotonic()
            r = httpx.post(
                open_server.url + "/v1/completions",
                json={"model": "golden", "prompt": "b", "max_tokens": 20, "seed": i},
                timeout=60,
            )
            assert r.status_code == 200 and time.monotonic() - began < 5
        assert not long_done.is_set()  # the short ones were served while the long one ran
    finally:
        t.join(300)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_streams_to_the_end_marker(open_server):
    body = json.dumps({"model": "golden", "prompt": "the ", "max_tokens": 50, "stream": True, "seed": 2})
    done = subprocess.run(
        ["curl", "-N", "-s", "-H", "Content-Type: application/json", "-d", body, open_server.url + "/v1/completions"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("data: ")]
    assert done.returncode == 0 and lines[-1] == "data: [DONE]"
    text = "".join(json.loads(line[6:])["choices"][0]["text"] for line in lines[:-1])
    assert text == open_server.sampler.generate("the ", length=50, seed=2, temperature=1.0)


def test_langchain_openai_completions_work(open_server):
    """langchain-openai's completions class: invoke, stream, batch and stop (it sends best_of=1, logit_bias
    {} and the like: the neutral values are taken)."""
    pytest.importorskip("langchain_openai")
    from langchain_openai import OpenAI

    llm = OpenAI(
        model="golden", base_url=open_server.url + "/v1", api_key="none", max_tokens=40, temperature=0.8, seed=4
    )
    text = llm.invoke("the ")
    assert text == open_server.sampler.generate("the ", length=40, seed=4, temperature=0.8)
    assert "".join(llm.stream("the ")) == text
    assert llm.batch(["the ", "the "]) == [text, text]
    stopped = llm.invoke("the ", stop=["e"])
    assert "e" not in stopped and text.startswith(stopped)
