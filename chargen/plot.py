"""``chargen plot``: the loss curves of one or more runs in one PNG.

Validation bpc (solid, with a dot per evaluation) and training loss in bits
(the same colour, lighter) against the step, the wall-clock time or the
characters seen; each run has a colour and its name in the legend. A dotted
line marks where a run was resumed, a star its best checkpoint. matplotlib is
an optional extra (``pip install "chargen[plot]"``), imported only here.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ChargenError

X_AXES = {"step": "step", "time": "wall-clock time (minutes)", "chars": "characters seen (millions)"}


@dataclass
class Curves:
    """One run's curves, x in the unit of the chosen axis (steps, minutes or millions of characters)."""

    name: str
    train: list[tuple[float, float]] = field(default_factory=list)    # (x, training loss in bits/char)
    val: list[tuple[float, float]] = field(default_factory=list)      # (x, validation bpc)
    resumed: list[float] = field(default_factory=list)                # x of each resume
    best: tuple[float, float] | None = None                           # (x, bpc) of the best checkpoint


def run_curves(run_dir, x: str = "step", name: str | None = None) -> Curves:
    """Read a run's metrics.jsonl into :class:`Curves` (a run without metrics yet is an error)."""
    from .rundir import open_run_dir, read_metrics
    if x not in X_AXES:
        raise ChargenError(f"--x must be one of {', '.join(X_AXES)}, got {x!r}")
    run = open_run_dir(run_dir)
    rows = _live_rows(read_metrics(run.dir))
    chars_per_step = run.train_config.batch_size * run.train_config.bptt
    measured = [r for r in rows if "event" not in r and _finite(r.get("step"))]
    if not any(_finite(r.get("loss")) or _finite(r.get("val_bpc")) for r in measured):
        raise ChargenError(f"{run.dir} has no metrics yet (metrics.jsonl has no loss); train it first")
    times = [(r["step"], r["elapsed"]) for r in measured if _finite(r.get("elapsed"))]

    def at(step: float) -> float:
        if x == "step":
            return step
        if x == "chars":
            return step * chars_per_step / 1e6
        return _interpolate(times, step) / 60

    curves = Curves(name or run.dir.name)
    curves.train = [(at(r["step"]), r["loss"] / math.log(2)) for r in measured if _finite(r.get("loss"))]
    curves.val = [(at(r["step"]), r["val_bpc"]) for r in measured if _finite(r.get("val_bpc"))]
    curves.resumed = [at(r["step"]) for r in rows if r.get("event") == "started" and r.get("step", 0) > 0]
    if curves.val:
        curves.best = min(curves.val, key=lambda point: point[1])
    return curves


def _live_rows(rows: list[dict]) -> list[dict]:
    """The rows of the run as it stands: a resume from step s drops what an earlier attempt logged after s
    (work lost with the process that logged it)."""
    out: list[dict] = []
    for row in rows:
        step = row.get("step")
        if row.get("event") == "started" and _finite(step):
            out = [r for r in out if not (_finite(r.get("step")) and r["step"] > step)]
        out.append(row)
    return out


def _interpolate(points: list[tuple[float, float]], step: float) -> float:
    """y at ``step`` on the polyline through ``points`` (sorted by step), held flat beyond its ends."""
    if not points:
        return 0.0
    before = [p for p in points if p[0] <= step]
    after = [p for p in points if p[0] >= step]
    if not before:
        return points[0][1] * step / points[0][0] if points[0][0] else points[0][1]
    if not after:
        return before[-1][1]
    (s0, y0), (s1, y1) = before[-1], after[0]
    return y0 if s1 == s0 else y0 + (y1 - y0) * (step - s0) / (s1 - s0)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def plot(runs: list, out="curves.png", x: str = "step", size: tuple[float, float] = (9.0, 5.0),
         dpi: int = 100) -> Path:
    """Draw the curves of ``runs`` (run folders) into the PNG ``out``; returns its path. The file appears
    whole or not at all."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ChargenError(f"-o must name a .png file, got {str(out)!r}")
    if not runs:
        raise ChargenError("name at least one run folder to plot")
    names = _names([Path(r) for r in runs])
    curves = [run_curves(r, x, name) for r, name in zip(runs, names)]
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise ChargenError(f"cannot write {out}: {folder} is not a folder")
    try:
        import matplotlib
        matplotlib.use("Agg")   # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ChargenError('chargen plot needs its extra: pip install "chargen[plot]"') from None

    fig, ax = plt.subplots(figsize=size, dpi=dpi)
    try:
        for i, c in enumerate(curves):
            colour = f"C{i % 10}"
            if c.train:
                ax.plot(*zip(*c.train), color=colour, alpha=0.3, linewidth=1)
            if c.val:
                ax.plot(*zip(*c.val), color=colour, marker="o", markersize=3, linewidth=1.8, label=c.name)
            else:
                ax.plot([], [], color=colour, label=f"{c.name} (no validation yet)")
            for at in c.resumed:
                ax.axvline(at, color=colour, linestyle=":", linewidth=1)
            if c.best:
                ax.plot(*c.best, color=colour, marker="*", markersize=14, markeredgecolor="black", linestyle="")
        ax.set_xlabel(X_AXES[x])
        ax.set_ylabel("bits per character")
        ax.set_title("validation bpc (training loss lighter; star: best checkpoint, dotted: resumed)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
        fig.tight_layout()
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{out.name}.", suffix=".png")
        os.close(fd)
        try:
            fig.savefig(tmp, format="png")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)   # as an ordinary new file, not mkstemp's 0600
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise ChargenError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return out


def _names(paths: list[Path]) -> list[str]:
    """Each run's folder name, or its path where two runs share a name."""
    names = [p.resolve().name for p in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names)]
