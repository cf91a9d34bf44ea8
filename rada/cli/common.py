"""What every ``rada`` subcommand shares: JSON on stdout, progress on stderr, early output checks."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from rada.safe_write import OutputSet, check_output

#: ``progress(fraction, stage, message)``, the pipeline's progress signature.
Progress = Callable[[float, str, str], None]


def print_json(obj: object) -> None:
    """Print ``obj`` as indented JSON on stdout (numpy scalars as floats).

    Args:
        obj: a JSON-ready object.
    """
    json.dump(obj, sys.stdout, indent=2, default=float)
    sys.stdout.write("\n")


def stage_report(report: dict, path: str | None, outputs: OutputSet) -> None:
    """With ``--report PATH``, stage the JSON report in ``outputs`` (written with the other outputs).

    Args:
        report: the command's JSON report.
        path: the ``--report`` path, or None (nothing staged).
        outputs: the command's output set.
    """
    if path:
        outputs.stage(path).write_text(json.dumps(report, indent=2, default=float), encoding="utf-8")


def check_outputs(*paths: tuple[str | None, tuple[str, ...] | None]) -> None:
    """Fail at once, before any work, if an output cannot be written (unknown format, no permission...).

    Args:
        paths: ``(path, allowed suffixes)`` pairs; a None path (option not given) is skipped.

    Raises:
        InputError: one line naming the output and the reason.
    """
    for path, allowed in paths:
        if path:
            check_output(path, allowed)


class LineProgress:
    """Progress for a log file or pipe: one plain line per new stage, no carriage returns."""

    def __init__(self, desc: str):
        self.desc, self.stage = desc, None

    def update(self, fraction: float, stage: str, message: str) -> None:
        """Print a line when the stage changes (``desc: NN% stage: message``).

        Args:
            fraction: overall progress in [0, 1].
            stage: the current stage's name; a line is printed only when it changes.
            message: what the stage is doing.
        """
        if stage != self.stage:
            self.stage = stage
            print(f"{self.desc}: {round(100 * fraction):3d}% {stage}: {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Nothing to clear (the lines stay in the log)."""


def stderr_progress(desc: str) -> tuple[Any, Progress]:
    """Progress on stderr driven by progress(fraction, stage, message) callbacks.

    A tqdm bar on a terminal; one line per stage otherwise, so logs hold no ``\\r`` redraws.

    Args:
        desc: the label in front of the bar or the lines (the command's name).

    Returns:
        ``(bar, progress)``: close ``bar`` when done; pass ``progress`` to the work.
    """
    if not sys.stderr.isatty():
        lines = LineProgress(desc)
        return lines, lines.update
    from tqdm import tqdm

    bar = tqdm(total=100, desc=desc, unit="%", file=sys.stderr, leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def progress(fraction: float, stage: str, message: str) -> None:
        bar.n = round(100 * fraction)
        bar.set_postfix_str(f"{stage}: {message}")
        bar.refresh()
    return bar, progress


def int_triple(text: str) -> tuple[int, int, int]:
    """argparse type for ``z,y,x``: three positive integers.

    Args:
        text: the option's value.

    Returns:
        The three integers.

    Raises:
        argparse.ArgumentTypeError: not three positive integers (argparse exits 2 with usage).
    """
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three integers z,y,x, got {text!r}") from None
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected three positive integers z,y,x, got {text!r}")
    return values  # type: ignore[return-value]
