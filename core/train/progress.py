"""Progress of a training run: a one-line bar on a terminal, plain log lines otherwise."""
from __future__ import annotations

import sys


def hms(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """A one-line progress bar on a terminal; plain log lines every ``log_interval`` steps otherwise.
    Silent on ranks other than 0."""

    def __init__(self, enabled: bool, total: int, log_interval: int, stream=None):
        self.stream = stream or sys.stderr
        self.enabled, self.total, self.every = enabled, total, log_interval
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.open_line = False

    def step(self, step, loss, lr, tps, eta):
        if not self.enabled:
            return
        if self.tty:
            width = 24
            done = int(width * step / self.total)
            bar = "#" * done + "." * (width - done)
            self.stream.write(f"\r[{bar}] {step}/{self.total} loss {loss:.4f} {tps / 1e3:.1f}k tok/s {hms(eta)} left ")
            self.stream.flush()
            self.open_line = True
        elif step % self.every == 0 or step == self.total:
            self.line(f"step {step}/{self.total} loss {loss:.4f} lr {lr:.2e} {tps:,.0f} tok/s eta {hms(eta)}")

    def line(self, text):
        if not self.enabled:
            return
        if self.open_line:
            self.stream.write("\n")
            self.open_line = False
        print(text, file=self.stream, flush=True)
