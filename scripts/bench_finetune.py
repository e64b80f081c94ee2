"""Does fine-tuning pay off? A base run on one corpus, then a small corpus of different text: fine-tuned
from the base against trained from scratch, same model, both scored on the small corpus's validation split.

Usage::

    python scripts/bench_finetune.py                         # 4 min base, 1 min fine-tune, 3 min scratch
    python scripts/bench_finetune.py --base-time 1m --tune-time 20s --scratch-time 1m   # a quick look

The base is the ``cpu`` preset on tiny shakespeare (found through $CHARGEN_CORPORA, or --base-corpus).
The small corpus is made from licence texts every Debian machine has (/usr/share/common-licenses:
GPL-3, Apache-2.0, MPL-2.0, GFDL-1.3, about 86 KB of legal English), or --target. It prints each
run's validation bpc by time and by step, whether the goal holds (the fine-tune, in its budget, below
the best the scratch run reaches in its three times longer budget), and draws the curves with
``chargen plot`` when matplotlib is there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

LICENCES = ["GPL-3", "Apache-2.0", "MPL-2.0", "GFDL-1.3"]


def chargen(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "chargen", *map(str, args)], check=True)


def val_curve(run: Path) -> list[tuple[int, float, float]]:
    """(step, elapsed seconds, validation bpc) of each evaluation."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["elapsed"], r["val_bpc"]) for r in rows if "val_bpc" in r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-corpus", default="tinyshakespeare", help="the base run's corpus (default tinyshakespeare)")
    ap.add_argument("--target", default=None, help="the small corpus (default: Debian's licence texts)")
    ap.add_argument("--base-time", default="4m")
    ap.add_argument("--tune-time", default="1m")
    ap.add_argument("--scratch-time", default="3m")
    ap.add_argument("--out", default=None, help="keep the runs (and curves.png) in this folder")
    ap.add_argument("--base", default=None, help="an existing base run to start from (skips training one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="chargen-finetune-") as tmp:
        work = Path(args.out) if args.out else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        target = Path(args.target) if args.target else work / "licences.txt"
        if not args.target:
            texts = [Path("/usr/share/common-licenses", name).read_text(encoding="utf-8") for name in LICENCES]
            target.write_text("\n\n".join(texts), encoding="utf-8")
        common = ["--preset", "cpu", "--preview-chars", "0", "--no-progress", "--overwrite"]
        base = Path(args.base) if args.base else work / "base"
        if not args.base:
            chargen("train", args.base_corpus, "--out", base, "--max-time", args.base_time, *common)
        small = ["--eval-every", "50", "--eval-chars", "0"]  # every validation character, often
        chargen(
            "train", target, "--out", work / "tuned", "--init-from", base, "--max-time", args.tune_time, *small, *common
        )
        chargen("train", target, "--out", work / "scratch", "--max-time", args.scratch_time, *small, *common)

        tuned, scratch = val_curve(work / "tuned"), val_curve(work / "scratch")
        print(f"\nsmall corpus: {target} ({target.stat().st_size:,} bytes); {os.cpu_count()} CPUs")
        print(
            f"base: {base}, cpu preset on {args.base_corpus} for {args.base_time}, best val "
            f"{min(v for _, _, v in val_curve(base)):.4f} bpc (its own corpus)\n"
        )
        print("| run | budget | steps | final val bpc | best val bpc |")
        print("|---|---|---|---|---|")
        for name, budget, curve in (
            ("fine-tuned", args.tune_time, tuned),
            ("from scratch", args.scratch_time, scratch),
        ):
            print(f"| {name} | {budget} | {curve[-1][0]} | {curve[-1][2]:.4f} | {min(v for _, _, v in curve):.4f} |")
        same_steps = [v for s, _, v in scratch if s <= tuned[-1][0]]
        print(
            f"\nfrom scratch after the fine-tune's {tuned[-1][0]} steps: {same_steps[-1]:.4f} bpc" if same_steps else ""
        )
        best_tuned, best_scratch = min(v for _, _, v in tuned), min(v for _, _, v in scratch)
        print(
            f"fine-tuned best / scratch best: {best_tuned / best_scratch:.3f}; goal (fine-tuned in "
            f"{args.tune_time} below scratch's best in {args.scratch_time}): "
            f"{'met' if best_tuned < best_scratch else 'NOT met'}"
        )
        try:
            chargen("plot", work / "tuned", work / "scratch", "-o", work / "curves.png", "--x", "time")
        except subprocess.CalledProcessError:
            print('(no plot: pip install "chargen[plot]")')


if __name__ == "__main__":
    main()
