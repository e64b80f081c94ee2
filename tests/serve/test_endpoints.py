"""The server's other endpoints (issue 33, item 4): /metrics in Prometheus's format, /tokenize and /detokenize
in llama.cpp's shapes, CORS for named origins, and the prompt cache seen through the server."""

from __future__ import annotations

from pathlib import Path

import pytest

openai = pytest.importorskip("openai", reason="the openai client is a dev dependency")
pytest.importorskip("uvicorn", reason="chargen[serve] is not installed")
httpx = pytest.importorskip("httpx")
parser = pytest.importorskip("prometheus_client.parser")

from chargen.serve.app import Limits  # noqa: E402
from conftest import LiveServer, one_error_line  # noqa: E402

KEY = "sk-endpoints"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(golden_run: Path):
    s = LiveServer(
        golden_run,
        api_key=KEY,
        limits=Limits(max_length=1000, max_queued=64, max_prompt=5000),
        cors_origins=["https://app.example.org", "http://localhost:3000"],
        prompt_cache=8,
    )
    yield s
    s.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _samples(server) -> dict:
    text = httpx.get(server.url + "/metrics").text
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_characters_and_first_characters(client, server):
    before = _samples(server)
    client.completions.create(model="golden", prompt="the ", max_tokens=30, seed=1, n=2)
    list(client.completions.create(model="golden", prompt="a", max_tokens=20, seed=2, stream=True))
    httpx.post(server.url + "/v1/completions", json={"prompt": "a", "max_tokens": -1}, headers=AUTH)
    after = _samples(server)
    done = ("chargen_requests_total", dict(route="/v1/completions", status="200"))
    assert _value(after, done[0], **done[1]) - _value(before, done[0], **done[1]) == 2
    refused = dict(route="/v1/completions", status="400")
    assert _value(after, "chargen_requests_total", **refused) - _value(before, "chargen_requests_total", **refused) == 1
    chars = "chargen_generated_characters_total"
    assert _value(after, chars) - _value(before, chars) == 2 * 30 + 20
    count = "chargen_time_to_first_character_seconds_count"
    assert _value(after, count) - _value(before, count) == 2
    assert _value(after, "chargen_queue_depth") == 0 and _value(after, "chargen_batch_size") == 0
    assert httpx.get(server.url + "/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")


def test_a_prompt_sent_again_is_found_in_the_cache_and_gives_the_same_text(client, server):
    prompt = "the king and the lady went out to the sea, " * 3
    before = _samples(server)
    texts = [
        client.completions.create(model="golden", prompt=prompt, max_tokens=40, seed=3).choices[0].text
        for _ in range(3)
    ]
    after = _samples(server)
    assert texts[0] == texts[1] == texts[2] == server.sampler.generate(prompt, length=40, seed=3, temperature=1.0)
    hits = _value(after, "chargen_prompt_cache_total", result="hit") - _value(
        before, "chargen_prompt_cache_total", result="hit"
    )
    misses = _value(after, "chargen_prompt_cache_total", result="miss") - _value(
        before, "chargen_prompt_cache_total", result="miss"
    )
    assert (hits, misses) == (2, 1)


def test_tokenize_and_detokenize_round_trip(server):
    vocab = server.sampler.vocab
    text = "the cat, and a dog"
    r = httpx.post(server.url + "/tokenize", json={"content": text}, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"tokens": vocab.encode(text)}
    pieces = httpx.post(server.url + "/tokenize", json={"content": "ab", "with_pieces": True}, headers=AUTH).json()
    assert pieces == {"tokens": [{"id": vocab.chars.index(c), "piece": c} for c in "ab"]}
    back = httpx.post(server.url + "/detokenize", json={"tokens": r.json()["tokens"]}, headers=AUTH)
    assert back.json() == {"content": text}
    assert httpx.post(server.url + "/tokenize", json={"content": ""}, headers=AUTH).json() == {"tokens": []}


@pytest.mark.parametrize(
    "route,body,param",
    [
        ("/tokenize", {"content": 5}, "content"),
        ("/tokenize", {}, "content"),
        ("/tokenize", {"content": "a" * 5001}, "content"),
        ("/tokenize", {"content": "\u2603"}, "content"),
        ("/tokenize", {"content": "a", "add_special": True}, "add_special"),
        ("/tokenize", {"content": "a", "colour": 1}, "colour"),
        ("/detokenize", {"tokens": [1, -1]}, "tokens"),
        ("/detokenize", {"tokens": [10**6]}, "tokens"),
        ("/detokenize", {"tokens": "abc"}, "tokens"),
        ("/detokenize", {"tokens": [1.5]}, "tokens"),
    ],
)
def test_bad_token_requests_are_openai_errors(server, route, body, param):
    r = httpx.post(server.url + route, json=body, headers=AUTH)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_token_routes_need_the_key(server):
    assert httpx.post(server.url + "/tokenize", json={"content": "a"}).status_code == 401


def test_cors_answers_named_origins_only(server):
    preflight = {
        "Origin": "https://app.example.org",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    r = httpx.options(server.url + "/v1/completions", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.org"
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    other = httpx.options(server.url + "/v1/completions", headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    assert other.status_code == 400 and other.json()["error"]["message"].startswith("Disallowed CORS origin")
    answer = httpx.post(
        server.url + "/v1/completions",
        json={"prompt": "a", "max_tokens": 3},
        headers={**AUTH, "Origin": "http://localhost:3000"},
    )
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_an_origin_is_matched_as_browsers_send_it(golden_run):
    from chargen.cli.serve import origin

    assert origin("HTTPS://App.Example.ORG/") == "https://app.example.org"
    assert origin("http://LOCALHOST:3000") == "http://localhost:3000" and origin("*") == "*"


def test_cors_is_off_by_default(golden_run):
    s = LiveServer(golden_run)
    try:
        r = httpx.post(
            s.url + "/v1/completions", json={"prompt": "a", "max_tokens": 3}, headers={"Origin": "https://x.example"}
        )
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    finally:
        s.stop()


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--cors-origin", "example.org"], "argument --cors-origin: must be an origin such as https://example.org"),
        (["--cors-origin", "https://example.org/path"], "must be an origin"),
        (["--cors-origin", "ftp://example.org"], "must be an origin"),
        (["--cors-origin", "https://example.org:99999"], "must be an origin"),
        (["--prompt-cache", "-1"], "argument --prompt-cache"),
    ],
)
def test_serve_flag_mistakes_are_one_line(cli, golden_run, args, fragment):
    code, out, err = cli("serve", golden_run, *args)
    assert code == 2 and out == ""
    one_error_line(err, fragment)


def test_inspect_answers_the_samplers_inspection_as_json(server):
    """POST /v1/inspect gives the JSON of `chargen inspect --format json`: the sampler's own inspection."""
    text = "the cat, said no\nand so: 'it was'."
    r = httpx.post(server.url + "/v1/inspect", json={"text": text, "top": 3, "units": [0, 5]}, headers=AUTH)
    assert r.status_code == 200, r.text
    want = server.sampler.inspect(text, top=3, units=[0, 5]).to_json()
    assert r.json() == want
    assert len(want["logprobs"]) == len(text) and all(len(row) == 3 for row in want["top"])
    assert want["unit_ids"] == [0, 5] and len(want["units"]["layer 0"]["h"]) == len(text)
    named = httpx.post(server.url + "/v1/inspect", json={"text": text, "model": "golden", "top": 20}, headers=AUTH)
    assert named.status_code == 200 and all(len(row) == 20 for row in named.json()["top"])
    none = httpx.post(server.url + "/v1/inspect", json={"text": text, "units": []}, headers=AUTH).json()
    assert none["units"] == {} and none["logprobs"] == want["logprobs"]
    js = httpx.get(server.url + "/inspect.js")
    assert (
        js.status_code == 200
        and "chargenInspect" in js.text
        and js.headers["content-type"].startswith("text/javascript")
    )


@pytest.mark.parametrize(
    "body,param",
    [
        ({}, "text"),
        ({"text": ""}, "text"),
        ({"text": 5}, "text"),
        ({"text": "a" * 5001}, "text"),
        ({"text": "\u2603 snow"}, "text"),
        ({"text": "ab", "top": 0}, "top"),
        ({"text": "ab", "top": 21}, "top"),
        ({"text": "ab", "units": [0] * 20000}, "units"),
        ({"text": "ab", "layers": [3]}, "layers"),
        ({"text": "ab", "layers": "0"}, "layers"),
        ({"text": "ab", "units": [16]}, "units"),
        ({"text": "ab", "units": [-1]}, "units"),
        ({"text": "ab", "colour": 1}, "colour"),
    ],
)
def test_bad_inspect_requests_are_openai_errors(server, body, param):
    r = httpx.post(server.url + "/v1/inspect", json=body, headers=AUTH)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()
    assert httpx.get(server.url + "/health").status_code == 200


def test_an_inspection_too_big_to_answer_is_refused_before_it_runs(server, monkeypatch):
    from chargen.serve import inspecting

    monkeypatch.setattr(inspecting, "MAX_VALUES", 1000)  # the server runs in this process's threads
    r = httpx.post(server.url + "/v1/inspect", json={"text": "a" * 40}, headers=AUTH)  # 40 x 16 x 2 = 1,280
    assert r.status_code == 400 and "1,280 unit activations" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "units"
    small = httpx.post(server.url + "/v1/inspect", json={"text": "a" * 40, "units": [1]}, headers=AUTH)
    assert small.status_code == 200
    assert httpx.post(server.url + "/v1/inspect", json={"text": "ab"}).status_code == 401
