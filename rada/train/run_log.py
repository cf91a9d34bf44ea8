"""A training run's metrics log: one CSV row per iteration and the loss-curve PNG drawn from it.

``log.csv`` has the columns of :data:`LOG_FIELDS` (validation columns empty between
validations); ``loss.png`` shows the losses, the schedules and the validation Dice. A
resumed run first drops the rows of the iterations its checkpoint does not hold, so the
log of a killed-and-resumed run equals the uninterrupted one.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Mapping

from rada.safe_write import atomic_path

LOG_NAME = "log.csv"
CURVE_NAME = "loss.png"
LOG_FIELDS = ("iteration", "loss", "sup", "unsup", "certain", "lr", "beta", "alpha", "threshold", "seconds",
              "val_dice", "val_hd95")


class RunLog:
    """The metrics CSV and the loss curve of one run folder.

    Args:
        run_dir: the run folder; the files are ``run_dir/log.csv`` and ``run_dir/loss.png``.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOG_NAME
        self.curve_path = Path(run_dir) / CURVE_NAME

    def truncate(self, iteration: int) -> None:
        """Keep the rows up to ``iteration`` (the rows of a killed run's lost iterations go).

        Args:
            iteration: the last iteration to keep (the checkpoint's).
        """
        if not self.path.exists():
            return
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= iteration]
        with open(self.path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, LOG_FIELDS)
            w.writeheader()
            w.writerows(rows)

    def append(self, values: Mapping[str, float]) -> None:
        """Add one iteration's row (keys outside :data:`LOG_FIELDS` are ignored).

        Args:
            values: the iteration's logged values.
        """
        new = not self.path.exists()
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, LOG_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(values)

    def plot(self) -> Path | None:
        """Draw (or redraw) the loss curve.

        Returns:
            The PNG's path, or None without matplotlib or without rows.
        """
        return plot_log(self.path, self.curve_path)

    def curve(self) -> Path | None:
        """The loss curve, drawn only when no save has drawn it yet (e.g. a finished run resumed).

        Returns:
            The PNG's path, or None when it cannot be drawn.
        """
        return self.curve_path if self.curve_path.exists() else self.plot()


def read_log(log: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of a run's ``log.csv`` as floats (an empty cell is NaN).

    Args:
        log: the CSV file.

    Returns:
        One dict per iteration, keyed by :data:`LOG_FIELDS`.
    """
    with open(log, newline="", encoding="utf-8") as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in r.items()} for r in csv.DictReader(f)]


def plot_log(log: str | os.PathLike, out: str | os.PathLike) -> Path | None:
    """Loss curves (total, supervised, unsupervised), beta/alpha/certain and the validation Dice as a PNG.

    Args:
        log: a run's ``log.csv``.
        out: the PNG to write (atomically).

    Returns:
        ``out``, or None without matplotlib (the optional extra ``plots``) or without rows
        (no log written yet, e.g. a checkpoint saved before the first iteration).
    """
    if not Path(log).exists():
        return None
    try:  # plots are optional (extra 'plots'): a run without matplotlib just has no curve
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_log(log)
    if not rows:
        return None
    it = [r["iteration"] for r in rows]
    val = [(r["iteration"], r["val_dice"]) for r in rows if math.isfinite(r.get("val_dice", math.nan))]
    fig, axes = plt.subplots(1, 3 if val else 2, figsize=(15 if val else 10, 3.5))
    ax, ax2 = axes[0], axes[1]
    for key in ("loss", "sup", "unsup"):
        ax.plot(it, [r[key] for r in rows], label=key, lw=0.8)
    ax.set_xlabel("iteration"), ax.set_ylabel("loss"), ax.legend()
    for key in ("beta", "alpha", "certain"):
        ax2.plot(it, [r[key] for r in rows], label=key, lw=0.8)
    ax2.set_xlabel("iteration"), ax2.legend()
    if val:
        axes[2].plot(*zip(*val), "o-", label="validation Dice")
        best = max(val, key=lambda p: p[1])
        axes[2].annotate(f"best {best[1]:.3f} @ {int(best[0])}", best)
        axes[2].set_xlabel("iteration"), axes[2].set_ylabel("Dice"), axes[2].set_ylim(0, 1), axes[2].legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(out)


__all__ = ["RunLog", "read_log", "plot_log", "LOG_NAME", "CURVE_NAME", "LOG_FIELDS"]
