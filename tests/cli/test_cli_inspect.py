"""``chargen inspect`` (issue 34): JSON equal to Sampler.inspect, the shaded text, and every mistake one line."""

import json

import pytest

from chargen import Sampler
from conftest import GOLDEN_DIR, one_error_line

RUN = GOLDEN_DIR / "run"


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_json_is_the_samplers_inspection(cli, backend):
    code, out, err = cli("inspect", RUN, "the cat\\nsaid no.", "--format", "json", "--backend", backend)
    assert code == 0, err
    got = json.loads(out)
    s = Sampler.load(RUN, backend=backend)
    want = s.inspect("the cat\nsaid no.")
    assert got == json.loads(json.dumps(want.to_json()))
    assert got["chars"] == list("the cat\nsaid no.") and len(got["logprobs"]) == len(got["top"]) == 16
    assert got["logprobs"] == pytest.approx(s.score("the cat\nsaid no.").logprobs.tolist(), abs=1e-6)


def test_shaded_text_and_plain_text(cli, tmp_path):
    code, out, _ = cli("inspect", RUN, "the cat", "--color", "always")
    assert code == 0 and out.startswith("surprise (nats): ") and "\x1b[30;48;5;" in out
    assert out.count("\x1b[0m") >= 2 and "".join(c for c in out.split("\n", 1)[1] if c.isalpha() or c == " ")
    code, out, _ = cli("inspect", RUN, "the cat")  # not a terminal: the text, plain
    assert code == 0 and out == "the cat\n"
    f = tmp_path / "t.txt"
    f.write_text("and so it was\n", encoding="utf-8")
    target = tmp_path / "out.json"
    code, out, err = cli("inspect", RUN, "--file", f, "--format", "json", "-o", target, "--units", "0-3", "--top", "2")
    assert code == 0 and out == "" and err.startswith(f"wrote {target}: 14 characters")
    got = json.loads(target.read_text(encoding="utf-8"))
    assert got["unit_ids"] == [0, 1, 2, 3] and all(len(row) == 2 for row in got["top"])
    assert len(got["units"]["layer 0"]["h"][0]) == 4


@pytest.mark.parametrize(
    "args,fragment",
    [
        ([], "give the text to read, or --file F"),
        (["the", "--file", "x.txt"], "give the text to read, or --file F"),
        (["THE"], "characters not in the vocabulary"),
        (["--file", "/no/such/file.txt"], "cannot read /no/such/file.txt"),
        (["the", "--units", "5-2"], "argument --units: a range must go up"),
        (["the", "--units", "a"], "argument --units: expected numbers and ranges"),
        (["the", "--layers", "3"], "layers must be between 0 and 0"),
        (["the", "--top", "0"], "argument --top: must be in [1, 100]"),
        (["the", "--format", "pdf"], "argument --format: invalid choice"),
        (["the", "-o", "/no/such/dir/out.json"], "cannot write /no/such/dir/out.json"),
    ],
)
def test_mistakes_are_one_line(cli, args, fragment):
    code, out, err = cli("inspect", RUN, *args)
    assert code == 2 and out == ""
    one_error_line(err, fragment)
