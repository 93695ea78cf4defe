"""A wall-clock budget for a training run (``--time 30m``): the run measures its own speed over
a few steps after warm-up, then fixes ``max_steps`` so that the learning-rate schedule ends when
the budget does (Cramming: Geiping & Goldstein 2022 train "for a day", not for N steps). A hard
stop at the budget plus a small tolerance ends a run that slows down later; it still saves and
exports."""

from __future__ import annotations

import math
import re
import time

from ..errors import ConfigError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# max_steps while the run has not measured its speed yet (the LR is still in warmup).
UNPLANNED_STEPS = 10**9
WARMUP_STEPS = 5  # the first steps (allocation, lazy init, allocator warm-up) are slower: not measured
HARD_STOP_TOLERANCE = 0.05  # stop at budget * (1 + this) even if max_steps is not reached


def parse_duration(text: str | int | float) -> float:
    """Seconds of a duration such as ``90``, ``90s``, ``30m``, ``1.5h``, ``1h30m``."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhd]?)", text.strip().lower())
        if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([smhd]?)", "", text.strip().lower()).strip():
            raise ConfigError(f"config field 'time' must be a duration like 90s, 30m or 2h, got {text!r}")
        seconds = sum(float(n) * UNITS[u or "s"] for n, u in parts)
    if not seconds > 0:
        raise ConfigError(f"config field 'time' must be positive, got {text!r}")
    return seconds


class TimeBudget:
    """Plans ``max_steps`` from the measured step time and says when the hard stop is due.

    ``after_step(step)`` is called after every optimizer step; once it has measured enough
    steps (at least 5 and 5% of the budget, at most 30 s of measuring) it returns the planned
    number of steps (capped by ``cap``, the user's own max_steps), else None."""

    def __init__(self, seconds: float, tokens_per_step: int, cap: int | None = None):
        self.seconds, self.tokens_per_step, self.cap = seconds, tokens_per_step, cap
        self.start = time.perf_counter()
        self.measure_from: tuple[int, float] | None = None
        self.plan: dict | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def after_step(self, step: int) -> int | None:
        if self.plan is not None:
            return None
        now = time.perf_counter()
        if self.measure_from is None:
            if step >= WARMUP_STEPS:
                self.measure_from = (step, now)
            return None
        first, t0 = self.measure_from
        measured = now - t0
        if step - first < 5 or measured < min(0.05 * self.seconds, 30.0):
            return None
        per_step = measured / (step - first)
        left = self.seconds - (now - self.start)
        steps = step + max(0, math.floor(left / per_step))
        if self.cap is not None:
            steps = min(steps, self.cap)
        steps = max(steps, step)
        self.plan = {"budget_s": self.seconds, "measured_steps": step - first,
                     "seconds_per_step": per_step, "tokens_per_sec": self.tokens_per_step / per_step,
                     "planned_max_steps": steps, "hard_stop_s": self.hard_stop_seconds()}
        return steps

    def hard_stop_seconds(self) -> float:
        return self.seconds * (1 + HARD_STOP_TOLERANCE)

    def overdue(self) -> bool:
        return self.elapsed() >= self.hard_stop_seconds()
