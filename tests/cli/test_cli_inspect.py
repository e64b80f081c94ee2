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
        (["the", "--units", "0-99999999999999999999"], "argument --units: expected numbers and ranges"),
        (["the", "--units", "0-10000000"], "argument --units: numbers go up to 1,048,575"),
        (["the", "--units", "\u00b2"], "argument --units: expected numbers and ranges"),
        (["the", "--layers", "\u0663"], "argument --layers: expected numbers and ranges"),
        (["the", "-o", ""], "-o needs a file name"),
        (["the", "-o", str(RUN / "report.json")], "is inside the run folder"),
        (["the", "-o", "/tmp"], "-o /tmp is a folder: give a file name inside it"),
    ],
)
def test_mistakes_are_one_line(cli, args, fragment):
    code, out, err = cli("inspect", RUN, *args)
    assert code == 2 and out == ""
    one_error_line(err, fragment)


def test_a_long_texts_json_is_written_piece_by_piece_and_is_the_same(cli, tmp_path):
    """Past 4,096 characters the JSON is written in pieces (rows of each field at a time): the same object."""
    text = "the cat said no, and so it was.\n" * 300  # 9,600 characters: three pieces of each field
    f = tmp_path / "long.txt"
    f.write_text(text, encoding="utf-8")
    target = tmp_path / "long.json"
    code, _, err = cli("inspect", RUN, "--file", f, "--format", "json", "-o", target, "--units", "0,7")
    assert code == 0, err
    got = json.loads(target.read_text(encoding="utf-8"))
    want = Sampler.load(RUN, backend="numpy").inspect(text, units=[0, 7]).to_json()
    assert got == json.loads(json.dumps(want))
    assert len(got["chars"]) == len(got["logprobs"]) == len(got["units"]["layer 0"]["c"]) == len(text)


def test_a_report_too_long_for_a_browser_is_refused_before_reading(cli, tmp_path, monkeypatch):
    from chargen.generate import report

    monkeypatch.setattr(report, "MAX_HTML", 10)
    target = tmp_path / "r.html"
    code, out, err = cli("inspect", RUN, "the cat said no", "--format", "html", "-o", target)
    assert code == 2 and out == "" and not target.exists()
    one_error_line(err, "--format html shows at most 10 characters")
    assert "this text has 15" in err and "--format json" in err
    assert cli("inspect", RUN, "the cat", "--format", "html", "-o", target)[0] == 0
    page = target.read_text(encoding="utf-8")
    assert page.count('"logprobs":[') == 1 and page.rstrip().endswith("</html>")


def test_a_failed_write_leaves_no_file(cli, tmp_path, monkeypatch):
    """A write that fails half-way leaves neither the target nor a temporary file."""
    from chargen.generate import report

    def broken(inspection, rows=4096):
        yield "{"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "json_pieces", broken)
    target = tmp_path / "out.json"
    code, out, err = cli("inspect", RUN, "the cat", "--format", "json", "-o", target)
    assert code == 2 and out == ""
    one_error_line(err, "No space left on device")
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temporary file


def test_a_top_past_the_vocabulary_lists_every_character(cli):
    code, out, err = cli("inspect", RUN, "the", "--top", "50", "--format", "json")
    assert code == 0, err
    top = json.loads(out)["top"]
    assert all(len(row) == 29 for row in top) and all(
        sorted(c for c, _ in row) == sorted({c for c, _ in row}) for row in top
    )
    assert sum(p for _, p in top[0]) == pytest.approx(1.0, abs=1e-4)


def test_the_output_is_never_the_input_and_follows_links(cli, tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("the cat", encoding="utf-8")
    code, out, err = cli("inspect", RUN, "--file", f, "-o", f, "--format", "json")
    assert code == 2 and f.read_text(encoding="utf-8") == "the cat"
    one_error_line(err, "is the text being read")
    real, link = tmp_path / "real.json", tmp_path / "link.json"
    real.write_text("old", encoding="utf-8")
    link.symlink_to(real.name)
    assert cli("inspect", RUN, "the", "-o", link, "--format", "json")[0] == 0
    assert link.is_symlink() and json.loads(real.read_text(encoding="utf-8"))["chars"] == ["t", "h", "e"]
    code, out, _ = cli("inspect", RUN, "the", "-o", "-", "--format", "json")
    assert code == 0 and json.loads(out)["chars"] == ["t", "h", "e"]


def test_a_files_text_is_read_as_it_is(cli, tmp_path):
    """--file keeps \\r (as eval reads it), refuses what is not UTF-8 saying what to do, and reads at most a cap."""
    f = tmp_path / "crlf.txt"
    f.write_bytes(b"the\r\ncat\r")
    code, _, err = cli("inspect", RUN, "--file", f)
    assert code == 2 and "'\\r'" in err  # the golden vocabulary has no \r: it is seen, not turned into \n
    f.write_bytes(b"the c\xffat")
    code, _, err = cli("inspect", RUN, "--file", f)
    assert code == 2
    one_error_line(err, "not UTF-8 (invalid start byte at byte 5); save it as UTF-8")


def test_an_endless_file_is_refused_at_the_cap(cli, monkeypatch):
    from chargen.cli import inspect as command

    monkeypatch.setattr(command, "MAX_FILE", 1000)
    code, out, err = cli("inspect", RUN, "--file", "/dev/zero")
    assert code == 2 and out == ""
    one_error_line(err, "/dev/zero has more than 1,000 characters: inspect a part of it")
