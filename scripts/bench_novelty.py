"""Benchmark the novelty check: building the training text's suffix array, opening it again, and queries.

Usage::

    python scripts/bench_novelty.py                  # a 100 MB corpus, 5 query rounds
    python scripts/bench_novelty.py --mb 10 --rounds 3

The corpus is lines drawn at random (seeded) from tiny shakespeare ($CHARGEN_CORPORA or ../shared/corpora)
and the running Python's standard library, to ``--mb`` megabytes: prose and code, with the repeats real
corpora have. Printed: preparing it (the step the build follows, as a yardstick), building and storing the
suffix array in a process of its own (its time and peak memory, the process's whole peak RSS), opening it
again (memory-mapped, spot-checked), and the median time of ``longest_copy`` on 1,000-character texts, one
copied from the training text and one not, beside one full substring search of the text (``in`` for a
string that is not there: what a check without the index pays per position of the query).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from chargen.data.prepared import prepare
from chargen.data.suffix import suffix_index


def corpus_lines() -> list[str]:
    lines = []
    for d in [*os.environ.get("CHARGEN_CORPORA", "").split(os.pathsep), str(REPO.parent / "shared" / "corpora")]:
        if d and (Path(d) / "tinyshakespeare.txt").is_file():
            lines += (Path(d) / "tinyshakespeare.txt").read_text(encoding="utf-8").splitlines()
            break
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:400]:
        lines += path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [line for line in lines if line.strip()]


def write_corpus(path: Path, mb: int) -> None:
    rng, lines, size = random.Random(0), corpus_lines(), 0
    with open(path, "w", encoding="utf-8") as f:
        while size < mb * 1_000_000:
            chunk = "\n".join(rng.choices(lines, k=10_000)) + "\n"
            f.write(chunk)
            size += len(chunk.encode("utf-8"))


BUILD = """
import resource, sys, time
sys.path.insert(0, {repo!r})
from chargen.data.prepared import cached
from chargen.data.suffix import suffix_index
corpus = cached({fingerprint!r}, {cache!r})
t = time.perf_counter()
index = suffix_index(corpus)
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, index.sa.dtype)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=100, help="corpus size in megabytes (default 100)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.mb < 1 or args.rounds < 1:
        ap.exit(2, f"{ap.prog}: error: --mb and --rounds must be at least 1\n")
    with tempfile.TemporaryDirectory(prefix="bench-novelty-") as tmp:
        source, cache = Path(tmp) / "corpus.txt", str(Path(tmp) / "cache")
        write_corpus(source, args.mb)
        t = time.perf_counter()
        corpus = prepare(source, cache_dir=cache)
        prepared = time.perf_counter() - t
        n = corpus.meta["train_chars"]
        print(
            f"corpus: {source.stat().st_size / 1e6:.0f} MB, {n:,} training characters, {len(corpus.vocab)} in the vocabulary"
        )
        print(f"prepare (the yardstick): {prepared:.1f} s")
        code = BUILD.format(repo=str(REPO), fingerprint=corpus.fingerprint, cache=cache)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        seconds, peak, dtype = done.stdout.split()
        stored = (corpus.dir / "train.sa.npy").stat().st_size
        print(
            f"build and store the suffix array: {float(seconds):.1f} s, peak memory of that process "
            f"{int(peak) / 2**20:,.0f} MiB; stored {stored / 2**20:,.0f} MiB ({dtype})"
        )
        opened = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            index = suffix_index(corpus)
            opened.append(time.perf_counter() - t)
        print(f"open it again (memory-mapped, spot-checked): median {statistics.median(opened) * 1000:.1f} ms")
        text = corpus.vocab.decode(corpus.ids("train")[:5_000_000])
        rng = random.Random(1)
        words = text.split()
        queries = {
            "copied (1,000 characters of the training text)": text[1_000_000:1_001_000],
            "not copied (its words shuffled)": " ".join(rng.sample(words, 400))[:1000],
        }
        whole = corpus.vocab.decode(corpus.ids("train"))
        for name, q in queries.items():
            times, found = [], None
            for _ in range(args.rounds):
                t = time.perf_counter()
                found = index.longest_copy(corpus.vocab.encode_known(q))
                times.append(time.perf_counter() - t)
            scans = []
            for _ in range(args.rounds):
                t = time.perf_counter()
                _ = "\x00" + q[:50] in whole  # never there: the whole text is read, as a check without the index must
                scans.append(time.perf_counter() - t)
            print(
                f"longest_copy, {name}: median {statistics.median(times) * 1000:.0f} ms, found {found[0]:,} "
                f"characters; one full substring search of the text: {statistics.median(scans) * 1000:.0f} ms, "
                f"which a check without the index pays for each of the {len(q):,} positions"
            )
        print(f"this process's peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
