"""A live progress line (step, samples/s, ETA): '\r'-updated on a terminal, one line every few seconds otherwise."""
from __future__ import annotations

import sys
import time


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    def __init__(self, total: int, start: int = 0, enabled: bool = True, every: float = 5.0, stream=None):
        self.total, self.start, self.enabled, self.every = total, start, enabled, every
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.t0 = self.last_print = time.perf_counter()
        self.first, self.t_first = None, self.t0

    def line(self, step: int, metrics: dict) -> str:
        if self.first is None:  # rate and ETA count from the first step: start-up is not throughput
            self.first, self.t_first = step, time.perf_counter()
        elapsed = time.perf_counter() - self.t_first
        done = step - self.first
        eta = elapsed / done * (self.total - step) if done else 0.0
        parts = [f"step {step}/{self.total}"]
        if "loss" in metrics:
            parts.append(f"loss {metrics['loss']:.4f}")
        if "samples_per_s" in metrics:
            parts.append(f"{metrics['samples_per_s']:.0f} samples/s")
        parts.append(f"ETA {_fmt_time(eta)}")
        return " | ".join(parts)

    def update(self, step: int, metrics: dict) -> None:
        now = time.perf_counter()
        quiet = not self.tty and now - self.last_print < self.every and step != self.total
        if not self.enabled or (quiet and self.first is not None):
            return
        self.last_print = now
        end = "\r" if self.tty else "\n"
        print(self.line(step, metrics), end=end, file=self.stream, flush=True)

    def done(self, step: int) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.t0
            lead = "\n" if self.tty else ""
            print(f"{lead}finished at step {step} in {_fmt_time(elapsed)}", file=self.stream, flush=True)
