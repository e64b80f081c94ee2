"""``chargen plot``: the loss curves of one or more runs in one PNG.

Validation bpc (solid, with a dot per evaluation) and training loss in bits
(the same colour, lighter) against the step, the wall-clock time or the
characters seen; each run has a colour and its name in the legend. A dotted
line marks where a run was resumed, a star its best checkpoint. matplotlib is
an optional extra (``pip install "chargen[plot]"``), imported only here.
"""

from __future__ import annotations

import bisect
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ..errors import ChargenError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

X_AXES = {"step": "step", "time": "wall-clock time (minutes)", "chars": "characters seen (millions)"}


@dataclass
class Curves:
    """One run's curves, x in the unit of the chosen axis (steps, minutes or millions of characters)."""

    name: str
    train: list[tuple[float, float]] = field(default_factory=list)  # (x, training loss in bits/char)
    val: list[tuple[float, float]] = field(default_factory=list)  # (x, validation bpc)
    resumed: list[float] = field(default_factory=list)  # x of each resume
    best: tuple[float, float] | None = None  # (x, bpc) of the best checkpoint
    no_val: bool = False  # the run has no validation split


def run_curves(run_dir: str | os.PathLike[str], x: str = "step", name: str | None = None) -> Curves:
    """Read a run's metrics.jsonl into :class:`Curves` (a run without metrics yet is an error)."""
    from .folder import open_run_dir, read_metrics

    if x not in X_AXES:
        raise ChargenError(f"--x must be one of {', '.join(X_AXES)}, got {x!r}")
    run = open_run_dir(run_dir)
    rows = _live_rows(read_metrics(run.dir))
    chars_per_step = run.train_config.batch_size * run.train_config.bptt
    measured = [r for r in rows if "event" not in r and _finite(r.get("step"))]
    if not any(_finite(r.get("loss")) or _finite(r.get("val_bpc")) for r in measured):
        raise ChargenError(f"{run.dir} has no metrics yet (metrics.jsonl has no loss); train it first")
    times = sorted((r["step"], r["elapsed"]) for r in measured if _finite(r.get("elapsed")))
    if x == "time" and not times:
        raise ChargenError(f"{run.dir}'s metrics have no wall-clock times; plot it with --x step")

    def at(step: float) -> float:
        if x == "step":
            return step
        if x == "chars":
            return step * chars_per_step / 1e6
        return _interpolate(times, step) / 60

    curves = Curves(name or run.dir.name)
    curves.train = [(at(r["step"]), r["loss"] / math.log(2)) for r in measured if _finite(r.get("loss"))]
    curves.val = [(at(r["step"]), r["val_bpc"]) for r in measured if _finite(r.get("val_bpc"))]
    curves.resumed = [
        at(r["step"]) for r in rows if r.get("event") == "started" and _finite(r.get("step")) and r["step"] > 0
    ]
    curves.no_val = not run.config["corpus"].get("val_chars")
    if curves.val:
        curves.best = min(curves.val, key=lambda point: point[1])
    return curves


def _live_rows(rows: list[dict]) -> list[dict]:
    """The rows of the run as it stands: a resume from step s drops what an earlier attempt logged after s
    (work lost with the process that logged it). Rows come in step order, so that is a cut at the end."""
    out: list[dict] = []
    for row in rows:
        step = row.get("step")
        if row.get("event") == "started" and _finite(step):
            while out and _finite(out[-1].get("step")) and out[-1]["step"] > step:
                out.pop()
        out.append(row)
    return out


def _interpolate(points: list[tuple[float, float]], step: float) -> float:
    """y at ``step`` on the polyline through ``points`` (sorted by step), from (0, 0) before the first
    and held flat after the last."""
    i = bisect.bisect_left(points, (step, -math.inf))
    if i < len(points) and points[i][0] == step:
        return points[i][1]
    (s0, y0) = points[i - 1] if i else (0.0, 0.0)
    if i == len(points):
        return y0
    s1, y1 = points[i]
    return y0 if s1 == s0 else y0 + (y1 - y0) * (step - s0) / (s1 - s0)


LIMIT = 1e6  # bits per character beyond this are no measurement (a hand-edited or broken file)


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) < LIMIT


def plot(
    runs: list[str | os.PathLike[str]],
    out: str | os.PathLike[str] = "curves.png",
    x: str = "step",
    size: tuple[float, float] = (9.0, 5.0),
    dpi: int = 100,
) -> Path:
    """Draw the curves of ``runs`` (run folders) into the PNG ``out``; returns its path. The file appears
    whole or not at all."""
    out = _png_path(out)
    if not runs:
        raise ChargenError("name at least one run folder to plot")
    runs = _unique(runs)
    curves = [run_curves(r, x, name) for r, name in zip(runs, _names([Path(r) for r in runs]))]
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise ChargenError(f"cannot write {out}: {folder} is not a folder")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=size, dpi=dpi)
    try:
        _draw(ax, curves, x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            fig.tight_layout()
        _save(fig, out, folder)
    except OSError as e:
        raise ChargenError(f"cannot write {out}: {e.strerror or e}") from None
    except (ValueError, OverflowError) as e:  # matplotlib, on values it cannot lay out
        raise ChargenError(f"cannot draw these curves ({e}); check the runs' metrics.jsonl") from None
    finally:
        plt.close(fig)
    return out


def _png_path(out: str | os.PathLike[str]) -> Path:
    """``out`` as a path, which must name a .png file."""
    if str(out) == "":
        raise ChargenError("-o must name a .png file, got ''")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ChargenError(f"-o must name a .png file, got {str(out)!r}")
    return out


def _unique(runs: list[str | os.PathLike[str]]) -> list[str | os.PathLike[str]]:
    """The runs in order, each once: a run named twice (under any path) is drawn once."""
    unique: dict[Path, str | os.PathLike[str]] = {}
    for r in runs:
        unique.setdefault(Path(r).resolve(), r)
    return list(unique.values())


def _pyplot() -> ModuleType:
    """matplotlib's pyplot, drawing to files only (an optional extra: a clear error where it is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ChargenError('chargen plot needs its extra: pip install "chargen[plot]"') from None
    return plt


def _draw(ax: Axes, curves: list[Curves], x: str) -> None:
    """Each run's curves in its colour (10 colours, then dashes), its resumes and best checkpoint, and the axes."""
    for i, c in enumerate(curves):
        colour, style = f"C{i % 10}", ("-", "--", "-.", ":")[i // 10 % 4]
        if c.train:
            ax.plot(*zip(*c.train), color=colour, alpha=0.3, linewidth=1, linestyle=style)
        if c.val:
            ax.plot(*zip(*c.val), color=colour, marker="o", markersize=3, linewidth=1.8, label=c.name, linestyle=style)
        else:
            why = "no validation split" if c.no_val else "no validation yet"
            ax.plot([], [], color=colour, linestyle=style, label=f"{c.name} ({why})")
        for at in c.resumed:
            ax.axvline(at, color=colour, linestyle=":", linewidth=1)
        if c.best:
            ax.plot(*c.best, color=colour, marker="*", markersize=14, markeredgecolor="black", linestyle="")
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel("bits per character")
    ax.set_title("validation bpc (training loss lighter; star: best checkpoint, dotted: resumed)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")


def _save(fig: Figure, out: Path, folder: Path) -> None:
    """Write the figure to a temporary file in ``folder`` and rename it to ``out``: whole or not at all."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{out.name}.", suffix=".png")
    os.close(fd)
    try:
        with warnings.catch_warnings():  # a font without some glyph of a name: boxes, not a warning
            warnings.simplefilter("ignore", UserWarning)
            fig.savefig(tmp, format="png")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as an ordinary new file, not mkstemp's 0600
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _names(paths: list[Path]) -> list[str]:
    """Each run's folder name, or its path where two runs share a name."""
    names = [p.resolve().name for p in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names)]
