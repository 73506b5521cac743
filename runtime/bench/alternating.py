"""Two sides of a comparison (e.g. the radix cache on and off) measured in one invocation:
both stay up and take turns, and who goes first alternates per repeat, so slow drifts on
the machine hit both sides."""

from __future__ import annotations

import statistics
from collections.abc import Callable


def run_alternating(sides: dict[str, Callable[[], dict]], repeats: int) -> dict[str, dict]:
    """Each side's row (a dict with "elapsed_s"), run `repeats` times: per side the first
    run's row with the median elapsed_s and every run's elapsed_s (`elapsed_s_runs`)."""
    runs: dict[str, list[dict]] = {label: [] for label in sides}
    order = list(sides)
    for r in range(repeats):
        for label in order if r % 2 == 0 else order[::-1]:
            runs[label].append(sides[label]())
    return {label: dict(rows[0], elapsed_s=statistics.median(x["elapsed_s"] for x in rows),
                        elapsed_s_runs=[x["elapsed_s"] for x in rows]) for label, rows in runs.items()}
