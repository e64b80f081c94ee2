"""The decoding fields of /v1/completions (issue 33): the rules on the logits, min_p, best_of and beam, each
sent by the official openai client and equal to what the Python sampler gives; each refused with an
OpenAI-shaped 400 when out of range."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

openai = pytest.importorskip("openai", reason="the openai client is a dev dependency")
pytest.importorskip("uvicorn", reason="chargen[serve] is not installed")
httpx = pytest.importorskip("httpx")

from chargen.serve.app import Limits  # noqa: E402
from conftest import LiveServer  # noqa: E402


@pytest.fixture(scope="module")
def server(golden_run: Path):
    s = LiveServer(golden_run, limits=Limits(max_length=1000, max_queued=64))
    yield s
    s.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)


def _id(server, char: str) -> str:
    return str(server.sampler.vocab.chars.index(char))


RULES = [
    dict(presence_penalty=1.5),
    dict(frequency_penalty=0.8, presence_penalty=-0.4),
    dict(extra_body=dict(repetition_penalty=1.7, repeat_last_n=8)),
    dict(extra_body=dict(repetition_penalty=1.3, repeat_last_n=-1)),
    dict(extra_body=dict(min_p=1.0)),  # greedy: this run is too near uniform for a smaller min_p to cut
    dict(presence_penalty=0.3, extra_body=dict(min_p=0.5, repetition_penalty=1.2)),
]


@pytest.mark.parametrize(
    "fields", RULES, ids=lambda f: ",".join([k for k in f if k != "extra_body"] + list(f.get("extra_body", {})))
)
def test_each_rule_gives_the_samplers_text(client, server, fields):
    r = client.completions.create(model="golden", prompt="the ", max_tokens=120, seed=4, temperature=0.9, **fields)
    settings = {k: v for k, v in fields.items() if k != "extra_body"} | fields.get("extra_body", {})
    want = server.sampler.generate("the ", length=120, seed=4, temperature=0.9, **settings)
    assert r.choices[0].text == want
    assert want != server.sampler.generate("the ", length=120, seed=4, temperature=0.9)


def test_logit_bias_takes_token_ids_and_minus_100_removes_one(client, server):
    e, space = _id(server, "e"), _id(server, " ")
    plain = client.completions.create(model="golden", prompt="", max_tokens=400, seed=2).choices[0].text
    r = client.completions.create(model="golden", prompt="", max_tokens=400, seed=2, logit_bias={e: -100, space: 3})
    assert "e" in plain and "e" not in r.choices[0].text
    assert r.choices[0].text == server.sampler.generate(
        "", length=400, seed=2, temperature=1.0, logit_bias={"e": -100, " ": 3}
    )


def test_a_streamed_completion_with_rules_joins_to_the_same_text(client, server):
    chunks = client.completions.create(
        model="golden",
        prompt="and ",
        max_tokens=80,
        seed=9,
        stream=True,
        frequency_penalty=1.0,
        extra_body={"min_p": 0.1},
    )
    text = "".join(c.choices[0].text for c in chunks)
    assert text == server.sampler.generate("and ", length=80, seed=9, temperature=1.0, frequency_penalty=1.0, min_p=0.1)


def test_best_of_returns_the_likeliest_n_as_the_sampler_does(client, server):
    r = client.completions.create(model="golden", prompt="the ", max_tokens=40, seed=5, n=2, best_of=5)
    want = server.sampler.generate("the ", length=40, seed=5, temperature=1.0, n=2, best_of=5)
    assert [c.text for c in r.choices] == want and [c.index for c in r.choices] == [0, 1]
    two = client.completions.create(model="golden", prompt=["a", "the "], max_tokens=30, seed=5, best_of=3)
    assert [c.text for c in two.choices] == [
        server.sampler.generate(p, length=30, seed=5, temperature=1.0, best_of=3) for p in ("a", "the ")
    ]


def test_beam_search_is_the_samplers(client, server):
    r = client.completions.create(model="golden", prompt="the ", max_tokens=30, n=2, extra_body={"beam": 3})
    assert [c.text for c in r.choices] == server.sampler.generate("the ", length=30, n=2, beam=3)
    stopped = client.completions.create(model="golden", prompt="the ", max_tokens=60, stop="e", extra_body={"beam": 2})
    assert stopped.choices[0].text == server.sampler.generate("the ", length=60, stop="e", beam=2)
    assert stopped.choices[0].finish_reason == ("length" if len(stopped.choices[0].text) == 60 else "stop")


BAD = [
    ("presence_penalty above 2", {"presence_penalty": 2.5}, "presence_penalty"),
    ("frequency_penalty below -2", {"frequency_penalty": -3}, "frequency_penalty"),
    ("frequency_penalty as text", {"frequency_penalty": "1"}, "frequency_penalty"),
    ("repetition_penalty of 0", {"repetition_penalty": 0}, "repetition_penalty"),
    ("a subnormal repetition_penalty", {"repetition_penalty": 5e-324}, "repetition_penalty"),
    ("logit_bias of a 5,000-digit id", {"logit_bias": {"9" * 5000: 1}}, "logit_bias"),
    ("logit_bias of an id with a leading zero", {"logit_bias": {"01": 1}}, "logit_bias"),
    ("logit_bias of non-ASCII digits", {"logit_bias": {"\u0969": 1}}, "logit_bias"),
    ("logit_bias banning every token", {"logit_bias": {str(i): -100 for i in range(29)}}, "logit_bias"),
    ("beam banning every token", {"beam": 2, "logit_bias": {str(i): -100 for i in range(29)}}, "logit_bias"),
    ("beam wider than the server allows", {"beam": 65}, "beam"),
    (
        "best_of past the logprobs cap",
        {"prompt": ["a"] * 16, "max_tokens": 1000, "best_of": 16, "logprobs": 1},
        "logprobs",
    ),
    ("repetition_penalty above 100", {"repetition_penalty": 101}, "repetition_penalty"),
    ("repeat_last_n below -1", {"repeat_last_n": -2}, "repeat_last_n"),
    ("min_p above 1", {"min_p": 1.5}, "min_p"),
    ("logit_bias of a non-number", {"logit_bias": {"5": "x"}}, "logit_bias"),
    ("logit_bias out of range", {"logit_bias": {"5": 101}}, "logit_bias"),
    ("logit_bias of an id past the vocabulary", {"logit_bias": {"100000": 1}}, "logit_bias"),
    ("logit_bias keyed by a character", {"logit_bias": {"e": 1}}, "logit_bias"),
    ("logit_bias not a map", {"logit_bias": [1]}, "logit_bias"),
    ("best_of below n", {"best_of": 1, "n": 2}, "best_of"),
    ("best_of above the limit", {"best_of": 10**6}, "best_of"),
    ("best_of streamed", {"best_of": 3, "stream": True}, "best_of"),
    ("beam of 0", {"beam": 0}, "beam"),
    ("beam streamed", {"beam": 2, "stream": True}, "beam"),
    ("beam narrower than n", {"beam": 2, "n": 3}, "beam"),
    ("beam with best_of", {"beam": 2, "best_of": 3}, "beam"),
    ("beam with logprobs", {"beam": 2, "logprobs": 1}, "beam"),
]


@pytest.mark.parametrize("name,fields,param", BAD, ids=[b[0] for b in BAD])
def test_each_field_out_of_range_is_an_openai_400(server, name, fields, param):
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "a", "max_tokens": 5, **fields}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param, err
    assert err["type"] == "invalid_request_error" and param in err["message"]
    ok = httpx.post(server.url + "/v1/completions", json={"prompt": "a", "max_tokens": 5})
    assert ok.status_code == 200  # and the server serves on


def test_a_beam_search_stops_when_its_client_leaves(server, monkeypatch):
    """A search whose client went away frees the one-search turn at once (it was holding up /v1/score)."""
    slow = {"prompt": ["the "] * 16, "max_tokens": 1000, "beam": 64}  # seconds of searching
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/completions", json=slow, timeout=0.5)
    start = __import__("time").monotonic()
    r = httpx.post(server.url + "/v1/score", json={"text": "the cat"}, timeout=30)
    assert r.status_code == 200 and __import__("time").monotonic() - start < 2.0


def test_the_neutral_values_clients_send_are_accepted(server):
    """langchain-openai and others send best_of=1, logit_bias={}, zero penalties (and nulls)."""
    neutral = {"best_of": 1, "logit_bias": {}, "presence_penalty": 0, "frequency_penalty": None, "min_p": None}
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "a", "max_tokens": 5, "seed": 1, **neutral})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == server.sampler.generate(
        "a", length=5, seed=1, temperature=1.0
    )
    assert json.loads(r.text)["usage"]["completion_tokens"] == 5
