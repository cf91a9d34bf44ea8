"""The loss curve ``plot_log`` draws from a run's ``log.csv`` (logs written here, no training):
the figure it saves (panels side by side, each series with its label and values, the axes'
labels, the validation Dice on 0..1 with the best one noted) and the PNG's pixel size,
which must not depend on the user's matplotlib settings.

Written for the mutation testing of issue #13 (``bench/results/mutation_issue13.md``, fourth pass).
"""

from __future__ import annotations

import csv
import struct
from pathlib import Path

import matplotlib
import pytest
from matplotlib.figure import Figure

from rada.train.run_log import RunLog, plot_log

ITERATIONS = [1, 2, 3, 4, 5, 6]
DICE = {2: 0.5, 4: 0.8, 6: 0.7}   # validations at 2, 4, 6; the best is at 4


def _row(i: int) -> dict[str, float]:
    return {"iteration": i, "loss": 1.0 / i, "sup": 0.6 / i, "unsup": 0.4 / i, "certain": 0.1 * i,
            "lr": 0.01, "beta": 0.01 * i, "alpha": 0.95 - 0.01 * i, "threshold": 0.6, "seconds": 1.5}


def _write_log(folder: Path, validated: bool) -> Path:
    log = RunLog(folder)
    for i in ITERATIONS:
        log.append({**_row(i), **({"val_dice": DICE[i], "val_hd95": 3.0} if validated and i in DICE else {})})
    return log.path


@pytest.fixture
def saved_figures(monkeypatch) -> list[Figure]:
    """Every figure ``plot_log`` saves, kept for inspection (``Figure.savefig`` still writes)."""
    figures: list[Figure] = []
    real_savefig = Figure.savefig

    def recording_savefig(self, *args, **kwargs):
        figures.append(self)
        return real_savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    return figures


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _series(ax) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def _check_training_panels(fig: Figure) -> None:
    losses, schedules = fig.axes[0], fig.axes[1]
    assert _series(losses) == {k: (ITERATIONS, [_row(i)[k] for i in ITERATIONS]) for k in ("loss", "sup", "unsup")}
    assert _series(schedules) == {k: (ITERATIONS, [_row(i)[k] for i in ITERATIONS]) for k in ("beta", "alpha", "certain")}
    assert (losses.get_xlabel(), losses.get_ylabel(), schedules.get_xlabel()) == ("iteration", "loss", "iteration")
    for ax in (losses, schedules):
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [line.get_label() for line in ax.get_lines()]
        assert {line.get_linewidth() for line in ax.get_lines()} == {0.8}  # thin: thousands of points


@pytest.mark.parametrize("figure_dpi", [100, 50])  # 50: a user's matplotlibrc must not change the PNG
def test_a_validated_run_has_three_panels_and_notes_its_best_dice(tmp_path, saved_figures, figure_dpi):
    log = _write_log(tmp_path, validated=True)
    with matplotlib.rc_context({"figure.dpi": figure_dpi}):
        out = plot_log(log, tmp_path / "curve.png")
    assert out == tmp_path / "curve.png" and _png_size(out) == (1500, 350)  # 15 x 3.5 in at 100 dpi
    (fig,) = saved_figures
    assert fig.axes[0].get_gridspec().get_geometry() == (1, 3) and len(fig.axes) == 3  # side by side
    _check_training_panels(fig)
    dice = fig.axes[2]
    (line,) = dice.get_lines()
    assert line.get_label() == "validation Dice" and (line.get_marker(), line.get_linestyle()) == ("o", "-")
    assert (list(line.get_xdata()), list(line.get_ydata())) == (list(DICE), list(DICE.values()))
    assert (dice.get_xlabel(), dice.get_ylabel(), dice.get_ylim()) == ("iteration", "Dice", (0.0, 1.0))
    assert [t.get_text() for t in dice.get_legend().get_texts()] == ["validation Dice"]
    (note,) = dice.texts
    assert note.get_text() == "best 0.800 @ 4" and tuple(note.xy) == (4, 0.8)


def test_a_run_without_validation_has_two_panels(tmp_path, saved_figures):
    out = plot_log(_write_log(tmp_path, validated=False), tmp_path / "curve.png")
    assert _png_size(out) == (1000, 350)
    (fig,) = saved_figures
    assert fig.axes[0].get_gridspec().get_geometry() == (1, 2) and len(fig.axes) == 2
    _check_training_panels(fig)


def test_a_log_without_the_validation_columns_still_plots(tmp_path, saved_figures):
    """A ``log.csv`` of a version that logged no validation columns."""
    log = tmp_path / "log.csv"
    fields = ["iteration", "loss", "sup", "unsup", "certain", "lr", "beta", "alpha", "threshold", "seconds"]
    with open(log, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(_row(i) for i in ITERATIONS)
    assert _png_size(plot_log(log, tmp_path / "curve.png")) == (1000, 350)
    (fig,) = saved_figures
    _check_training_panels(fig)
