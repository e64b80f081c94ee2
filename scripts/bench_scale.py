"""How chargen scales with the corpus: 10 MB, 100 MB and 1 GB (issue 10).

Usage::

    python scripts/bench_scale.py                     # 10, 100, 1000 MB; 3 runs each
    python scripts/bench_scale.py --mb 10 100 --runs 2

For each size it builds a corpus (tiny shakespeare or the standard library's
sources, repeated; see bench_prepare.py), then measures, each a fresh process,
the median of ``--runs``:

- ``prepare``: wall time and peak RSS of ``chargen prepare`` with an empty cache;
- ``train``: a ``--preset cpu`` run of a few steps on the prepared (cached)
  corpus: peak RSS, the time from launching the command to its first training
  step (the ``started`` event in metrics.jsonl), and the time of one periodic
  evaluation with the default ``--eval-chars`` (``eval_s``).

The first size is the baseline the others are compared with: a figure that
should stay flat is printed with its difference from it, one that should grow
linearly with its ratio to the size ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prepare import make_corpus

TRAIN = [
    "--preset",
    "cpu",
    "--max-steps",
    "30",
    "--eval-every",
    "20",
    "--log-every",
    "10",
    "--checkpoint-every",
    "1000",
    "--preview-chars",
    "0",
    "--no-progress",
]


def run(cmd: list[str], env: dict) -> tuple[float, float]:
    """Run a command; (wall seconds, peak RSS in MB) of that process alone."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    err = p.stderr.read().decode()
    p.stderr.close()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{err}")
    return wall, usage.ru_maxrss / 1024


def measure(size_mb: int, runs: int, work: Path) -> dict:
    corpus = work / f"corpus{size_mb}.txt"
    make_corpus(corpus, size_mb)
    env = dict(os.environ)
    prep_times, prep_rss, train_rss, to_first, evals = [], [], [], [], []
    for i in range(runs):
        cache = work / f"cache{size_mb}-{i}"
        wall, rss = run([sys.executable, "-m", "chargen", "prepare", str(corpus), "--cache-dir", str(cache)], env)
        prep_times.append(wall)
        prep_rss.append(rss)
        out = work / f"run{size_mb}-{i}"
        launched = time.time()
        _, rss = run(
            [
                sys.executable,
                "-m",
                "chargen",
                "train",
                str(corpus),
                "--out",
                str(out),
                "--cache-dir",
                str(cache),
                *TRAIN,
            ],
            env,
        )
        train_rss.append(rss)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        to_first.append(next(r["at"] for r in rows if r.get("event") == "started") - launched)
        evals.append(next(r["eval_s"] for r in rows if "eval_s" in r and r["step"] == 20))
        val_chars = next(r["val_chars"] for r in rows if "val_chars" in r)
        subprocess.run(["rm", "-rf", str(cache), str(out)], check=True)
    corpus.unlink()
    med = statistics.median
    return dict(
        mb=size_mb,
        prepare_s=med(prep_times),
        prepare_rss=med(prep_rss),
        train_rss=med(train_rss),
        to_first_step_s=med(to_first),
        eval_s=med(evals),
        eval_chars=val_chars,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(f"chargen scaling, median of {args.runs} runs each; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="chargen-scale-") as tmp:
        rows = []
        for mb in args.mb:
            rows.append(measure(mb, args.runs, Path(tmp)))
            r = rows[-1]
            print(
                f"  {mb:>5} MB: prepare {r['prepare_s']:.1f} s, {r['prepare_rss']:.0f} MB peak; "
                f"train {r['train_rss']:.0f} MB peak, first step after {r['to_first_step_s']:.1f} s, "
                f"one evaluation ({r['eval_chars']:,} chars) {r['eval_s']:.2f} s",
                flush=True,
            )
    base = rows[0]
    print("\n| corpus | prepare | prepare peak RSS | train peak RSS | command to first step | one evaluation |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mb']:,} MB | {r['prepare_s']:.1f} s | {r['prepare_rss']:.0f} MB | {r['train_rss']:.0f} MB | "
            f"{r['to_first_step_s']:.1f} s | {r['eval_s']:.2f} s ({r['eval_chars']:,} chars) |"
        )
    print(f"\nagainst the {base['mb']} MB baseline:")
    for r in rows[1:]:
        k = r["mb"] / base["mb"]
        print(
            f"  {r['mb']} MB (x{k:g}): prepare time x{r['prepare_s'] / base['prepare_s']:.1f} (linear: x{k:g}); "
            f"prepare RSS {r['prepare_rss'] - base['prepare_rss']:+.0f} MB; train RSS "
            f"{r['train_rss'] - base['train_rss']:+.0f} MB (flat: within 50); first step "
            f"{r['to_first_step_s'] - base['to_first_step_s']:+.1f} s; evaluation "
            f"x{r['eval_s'] / base['eval_s']:.2f} (flat)"
        )


if __name__ == "__main__":
    main()
