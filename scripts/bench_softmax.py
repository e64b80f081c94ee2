"""Full against adaptive softmax on a large alphabet: training speed by vocabulary size, and the best
validation loss each reaches in the same wall-clock budget.

Usage::

    apt-get install manpages-zh manpages-ja
    python scripts/manpages_corpus.py zh ja /tmp/manpages-cjk.txt       # about 4,000 distinct characters
    python scripts/bench_softmax.py /tmp/manpages-cjk.txt               # the whole measurement (~35 min)
    python scripts/bench_softmax.py CORPUS --rounds 1 --steps 20 --quality-time 30s --quality-at 1   # a look

Speed: the ``cpu`` preset trains ``--steps`` steps with each output layer; evaluation is pushed past
the end, and chars/s is the trainer's own figure over the steps after the first logged ones (warm-up of
the allocator and threads). The vocabulary is varied on the same text with ``--min-char-count`` (rarer
characters read as ``<unk>``), so every size has its own full/adaptive pair. Rounds alternate the two;
printed are the medians and the ratio adaptive / full.

Quality: at each ``--quality-at`` minimum count, a ``--quality-time`` run of each output layer (the
``cpu`` preset, evaluation included in the budget); printed is the best validation loss (the fixed
evaluation sample) and, scored afterwards on every validation character, the best checkpoint's exact
bpc. ``--covers`` adds adaptive runs with cutoffs at other coverages of the text.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import itertools

from chargen.config import COVER, default_cutoffs
from chargen.data.prepared import prepare


def chargen(*args, capture: bool = False) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "chargen", *map(str, args)],
        check=True,
        stdout=subprocess.PIPE if capture else None,
        text=True,
    )
    return done.stdout or ""


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_speed(corpus: str, run: Path, softmax: str, steps: int, min_count: int) -> float:
    """The trainer's chars/s over its logged intervals after the first two (allocator and threads warm)."""
    chargen(
        "train",
        corpus,
        "--out",
        run,
        "--preset",
        "cpu",
        "--softmax",
        softmax,
        "--min-char-count",
        min_count,
        "--max-steps",
        steps,
        "--log-every",
        max(1, steps // 8),
        "--eval-every",
        steps * 10,
        "--checkpoint-every",
        steps * 10,
        "--preview-chars",
        "0",
        "--no-progress",
        "--overwrite",
    )
    logged = [r for r in rows(run) if "chars_per_sec" in r]
    later = list(itertools.pairwise(logged))[1:]  # each row's rate is over the steps since the one before
    steps_in = [b["step"] - a["step"] for a, b in later]
    # Interval i took n_i * B * T / rate_i seconds; B * T cancels out of the overall rate.
    return sum(steps_in) / sum(n / b["chars_per_sec"] for n, (a, b) in zip(steps_in, later))


def vocabulary(run: Path) -> tuple[int, list[int] | None]:
    model = json.loads((run / "config.json").read_text())["model"]
    return model["vocab_size"], model.get("cutoffs")


def speed(args, work: Path) -> None:
    """The speed table: chars/s of each output layer at each vocabulary size, medians over rounds."""
    points = [(args.corpus, int(m)) for m in args.min_counts.split(",")]
    if args.english:
        points.append((args.english, 1))
    figures: dict[tuple, list[float]] = {}
    sizes: dict[tuple, tuple] = {}
    for r in range(args.rounds):
        for corpus, m in points:
            for softmax in ("full", "adaptive") if r % 2 == 0 else ("adaptive", "full"):
                run = work / f"speed-{Path(corpus).stem}-{m}-{softmax}"
                figures.setdefault((corpus, m, softmax), []).append(train_speed(corpus, run, softmax, args.steps, m))
                if softmax == "adaptive":
                    sizes[(corpus, m)] = vocabulary(run)
    print("\n| corpus | --min-char-count | vocabulary | cutoffs | full chars/s | adaptive chars/s | adaptive / full |")
    print("|---|---|---|---|---|---|---|")
    for corpus, m in points:
        full, adaptive = (statistics.median(figures[(corpus, m, s)]) for s in ("full", "adaptive"))
        V, cuts = sizes[(corpus, m)]
        print(
            f"| {Path(corpus).name} | {m} | {V:,} | {','.join(map(str, cuts))} | {full:,.0f} | {adaptive:,.0f} | "
            f"{adaptive / full:.2f}x |",
            flush=True,
        )
    for (corpus, m, softmax), values in sorted(figures.items()):
        print(
            f"raw chars/s {Path(corpus).name} --min-char-count {m} {softmax}: {', '.join(f'{v:,.0f}' for v in values)}"
        )


def quality(args, work: Path) -> None:
    """The quality table: best validation loss of each output layer after the same wall-clock budget."""
    covers = [tuple(float(x) for x in c.split(":")) for c in args.covers.split()]
    print(f"\nquality: {args.quality_time} per run, evaluation included\n")
    print(
        "| --min-char-count | vocabulary | output layer | cutoffs | steps | best val (sample) nats | "
        "best checkpoint, every val char, bpc |"
    )
    print("|---|---|---|---|---|---|---|")
    for m in (int(x) for x in args.quality_at.split(",")):
        variants = [("full", "full", []), ("adaptive", f"adaptive {':'.join(map(str, COVER))}", [])]
        if covers:
            counts = prepare(args.corpus, min_char_count=m).counts("train")
            for cover in covers:
                cuts = ",".join(map(str, default_cutoffs(counts, 320, cover)))
                variants.append(("adaptive", f"adaptive {':'.join(map(str, cover))}", ["--cutoffs", cuts]))
        for softmax, name, extra in variants:
            run = work / f"quality-{m}-{name.replace(' ', '-')}"
            chargen(
                "train",
                args.corpus,
                "--out",
                run,
                "--preset",
                "cpu",
                "--softmax",
                softmax,
                "--min-char-count",
                m,
                "--max-time",
                args.quality_time,
                "--preview-chars",
                "0",
                "--no-progress",
                "--overwrite",
                *extra,
            )
            evals = [r for r in rows(run) if "val_loss" in r]
            exact = json.loads(chargen("eval", run, "--split", "val", "--json", capture=True))
            V, cuts = vocabulary(run)
            print(
                f"| {m} | {V:,} | {name} | {','.join(map(str, cuts or [])) or '-'} | {evals[-1]['step']} | "
                f"{min(r['val_loss'] for r in evals):.4f} | {exact['bpc']:.4f} |",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", help="a large-alphabet text file (see scripts/manpages_corpus.py)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the speed table (0: no speed table)")
    ap.add_argument("--steps", type=int, default=48, help="steps per speed run (default 48)")
    ap.add_argument(
        "--min-counts",
        default="1,10,300,1000,3000",
        help="--min-char-count values of the speed table, each a vocabulary size",
    )
    ap.add_argument("--english", default="tinyshakespeare", help="a small-alphabet corpus for comparison ('' to skip)")
    ap.add_argument("--quality-time", default="3m")
    ap.add_argument("--quality-at", default="1,300", help="min-char-counts of the quality runs ('' for none)")
    ap.add_argument(
        "--covers",
        default="",
        help="other cutoff coverages for adaptive quality runs, e.g. '0.8:0.95 0.95:0.995' (default: none)",
    )
    ap.add_argument("--out", default=None, help="keep the runs in this folder")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="chargen-softmax-") as tmp:
        work = Path(args.out) if args.out else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(
            f"corpus {args.corpus}; cpu preset; {os.cpu_count()} CPUs; {args.rounds} rounds of {args.steps} "
            "steps per speed figure",
            flush=True,
        )
        if args.rounds:
            speed(args, work)
        if args.quality_at:
            quality(args, work)


if __name__ == "__main__":
    main()
