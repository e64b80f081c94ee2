"""Benchmark `chargen prepare` on a large corpus: throughput (MB/s) and peak RSS.

Usage::

    python scripts/bench_prepare.py                 # 200 MB, 3 runs
    python scripts/bench_prepare.py --mb 100 --runs 5

Builds a corpus of the requested size by repeating tiny shakespeare (if found
on $CHARGEN_CORPORA or ../shared/corpora) or the embedded pystdlib text, with
a line of mixed-script text every few KB so the vocabulary is not pure ASCII.
Each run is a fresh `chargen prepare` process with an empty cache, so nothing
is reused; peak RSS is that process's ru_maxrss.

Printed beside it, measured in the same run: a floor for any pipeline that
reads the file, hashes it and decodes it as UTF-8 (what prepare cannot avoid),
as a ratio prepare/floor.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXTRA = "Ünïcödé ligne — 日本語の行 — эмодзи 😀 — e\u0301\n"


def seed_text() -> str:
    dirs = os.environ.get("CHARGEN_CORPORA", "").split(os.pathsep) + [str(REPO.parent / "shared" / "corpora")]
    for d in dirs:
        p = Path(d) / "tinyshakespeare.txt" if d else None
        if p and p.is_file():
            return p.read_text(encoding="utf-8")
    sys.path.insert(0, str(REPO))
    from chargen.data.sources import stdlib_files

    _, files = stdlib_files()
    return "".join(f.read_text(encoding="utf-8", errors="replace") for f in files[:200])


def make_corpus(path: Path, megabytes: int) -> int:
    seed = seed_text()
    block = "".join(seed[i : i + 4000] + EXTRA for i in range(0, len(seed), 4000)).encode("utf-8")
    target = megabytes * 1_000_000
    written = 0
    with open(path, "wb") as f:
        while written < target:
            part = block[: target - written]
            # never cut a multi-byte character in half at the very end
            while part and (part[-1] & 0xC0) == 0x80:
                part = part[:-1]
            f.write(part)
            written += len(part)
            if len(part) < len(block):
                break
    return written


def run_prepare(path: Path, cache: Path) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one `chargen prepare` process."""
    code = (
        "import resource, sys, time; from chargen.cli import main; t = time.perf_counter(); "
        "rc = main(['prepare', sys.argv[1], '--cache-dir', sys.argv[2], '--json']); "
        "dt = time.perf_counter() - t; "
        "print(dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr); sys.exit(rc)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(path), str(cache)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    if r.returncode != 0:
        raise SystemExit(f"prepare failed: {r.stderr.strip()}")
    seconds, rss = r.stderr.strip().splitlines()[-1].split()
    return float(seconds), float(rss)


def floor_seconds(path: Path) -> float:
    """Read, sha256 and UTF-8 decode the file in 16 MiB chunks."""
    import codecs

    t = time.perf_counter()
    dec = codecs.getincrementaldecoder("utf-8")()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            h.update(chunk)
            dec.decode(chunk)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200, help="corpus size in MB (default 200)")
    ap.add_argument("--runs", type=int, default=3, help="runs; the median is reported (default 3)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.txt"
        size = make_corpus(path, args.mb)
        mb = size / 1e6
        times, rss, floors = [], [], []
        for i in range(args.runs):
            floors.append(floor_seconds(path))
            cache = Path(tmp) / f"cache{i}"
            t, r = run_prepare(path, cache)
            times.append(t)
            rss.append(r)
            print(
                f"run {i + 1}: prepare {t:.2f}s ({mb / t:.1f} MB/s), peak RSS {r:.0f} MB; "
                f"read+hash+decode floor {floors[-1]:.2f}s",
                flush=True,
            )
        t, f = statistics.median(times), statistics.median(floors)
        print(f"\ncorpus: {mb:.1f} MB, {args.runs} runs, {os.cpu_count()} cores")
        print(
            f"prepare: median {t:.2f}s = {mb / t:.1f} MB/s, peak RSS max {max(rss):.0f} MB "
            f"(median {statistics.median(rss):.0f} MB)"
        )
        print(
            f"floor (read + sha256 + utf-8 decode): median {f:.2f}s = {mb / f:.1f} MB/s; "
            f"prepare takes {t / f:.2f}x the floor"
        )


if __name__ == "__main__":
    main()
