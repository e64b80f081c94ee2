"""Time to quality: train tiny shakespeare for a wall-clock budget, then score the best checkpoint exactly.

Usage::

    python scripts/time_to_quality.py --name baseline -- --preset cpu
    python scripts/time_to_quality.py --name drop --seeds 1337,1,2 -- --preset cpu --dropout 0.1
    python scripts/time_to_quality.py --minutes 2 --name short -- --preset cpu --precision bf16

Everything after ``--`` goes to ``chargen train`` as is. Each seed is one ``chargen train tinyshakespeare
--max-time M`` (the budget includes its periodic evaluations; the corpus is prepared once, before the
first timed run), then ``chargen eval RUN --split val``: the exact mean over every validation character
with the state carried (the figure the issue asks for, not the sampled one training selects the best
checkpoint by). Prints one line per seed and the mean and spread; with ``--log FILE`` appends a JSON line
per recipe. Runs go to a temporary folder (``--keep`` keeps them). Run nothing else on the machine
meanwhile: the figure is a function of the CPU time the run gets.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def chargen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chargen", *args], capture_output=True, text=True, cwd=REPO)


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True, help="what this recipe is called in the output")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--seeds", default="1337", help="comma-separated seeds, one run each")
    ap.add_argument("--source", default="tinyshakespeare")
    ap.add_argument("--log", default=None, metavar="FILE.jsonl", help="append the results here")
    ap.add_argument("--keep", action="store_true", help="keep the run folders")
    args = ap.parse_args(own)
    prep = chargen("prepare", args.source, "--json")
    if prep.returncode != 0:
        sys.exit(f"prepare failed: {prep.stderr.strip()}")
    root = Path(tempfile.mkdtemp(prefix="ttq-"))
    results = []
    for seed in args.seeds.split(","):
        run = root / f"{args.name}-{seed}"
        t0 = time.perf_counter()
        done = chargen(
            "train",
            args.source,
            "--out",
            str(run),
            "--max-time",
            f"{args.minutes * 60:g}s",
            "--seed",
            seed,
            "--no-progress",
            "--preview-chars",
            "0",
            *extra,
        )
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            sys.exit(f"train failed: {done.stderr.strip().splitlines()[-1]}")
        score = chargen("eval", str(run), "--split", "val", "--json")
        if score.returncode != 0:
            sys.exit(f"eval failed: {score.stderr.strip()}")
        nats = json.loads(score.stdout)["nats"]
        info = json.loads(chargen("info", str(run), "--json").stdout)
        speed = re.search(r"\(([\d,]+) chars/s", done.stdout + done.stderr)
        chars_per_sec = int(speed.group(1).replace(",", "")) if speed else None
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        steps = max((r.get("step", 0) for r in rows), default=0)
        train_loss = next((r["loss"] for r in reversed(rows) if "loss" in r), float("nan"))
        sampled = min((r["val_loss"] for r in rows if "val_loss" in r), default=float("nan"))
        results.append(
            dict(
                seed=int(seed),
                val_nats=nats,
                sampled_best=sampled,
                steps=steps,
                train_loss=train_loss,
                wall_s=wall,
                chars_per_sec=chars_per_sec,
                parameters=info["parameters"],
            )
        )
        print(
            f"{args.name} seed {seed}: exact val {nats:.4f} nats/char (sampled best {sampled:.4f}), {steps} "
            f"steps, last train loss {train_loss:.3f}, {wall:.0f} s in chargen train, {chars_per_sec or 0:,} chars/s, "
            f"{info['parameters']:,} parameters",
            flush=True,
        )
    vals = [r["val_nats"] for r in results]
    spread = (max(vals) - min(vals)) / 2
    print(
        f"{args.name}: mean {statistics.mean(vals):.4f} nats/char over {len(vals)} seed(s)"
        + (f", spread ±{spread:.4f} (min {min(vals):.4f}, max {max(vals):.4f})" if len(vals) > 1 else "")
        + f"; chargen train {' '.join(extra)}",
        flush=True,
    )
    if args.log:
        with open(args.log, "a", encoding="utf-8") as f:
            f.write(
                json.dumps(
                    dict(
                        name=args.name,
                        flags=extra,
                        minutes=args.minutes,
                        results=results,
                        mean=statistics.mean(vals),
                        date=time.strftime("%Y-%m-%d"),
                    )
                )
                + "\n"
            )
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"runs kept in {root}")


if __name__ == "__main__":
    main()
