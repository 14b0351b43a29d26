"""Progress a person can follow: a tqdm bar on a terminal, and a line in the rule's log every so often.

Snakemake keeps a job's log file, not its terminal, and tqdm draws nothing where stderr is not a
terminal. ``Bar`` does both: the bar (rate, ETA) when there is a terminal, and every
``logs.progress_every_s`` seconds one ``progress`` line (done / total, rate, ETA) through the
``dermsynth`` logger, plus a last line with the count and the time taken when it closes.
"""

from __future__ import annotations

import logging
import time

from tqdm.auto import tqdm

log = logging.getLogger("dermsynth")
#: seconds between progress lines; logs.setup sets it from the config's ``logs`` section
EVERY_S = 60.0


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Bar:
    """tqdm's bar and periodic log lines for one long loop; ``with Bar(...)`` or ``.close()``."""

    def __init__(
        self,
        iterable=None,
        total=None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        disable: bool = False,
        leave: bool = True,
    ):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.desc, self.unit, self.disable = iterable, desc, unit, disable
        self.n, self.start_n = initial, initial
        self._total = total
        self._tq = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            initial=initial,
            leave=leave,
            disable=True if disable else None,
            dynamic_ncols=True,
        )
        self.t0 = self.last = time.monotonic()
        self.closed = False

    @property
    def total(self):
        return self._total

    @total.setter
    def total(self, value):
        self._total = value
        self._tq.total = value

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, k: int = 1) -> None:
        self.n += k
        self._tq.update(k)
        now = time.monotonic()
        if not self.disable and now - self.last >= EVERY_S:
            self.last = now
            log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.t0, 1e-9)
        rate = (self.n - self.start_n) / elapsed
        done = f"{self.n}/{self._total}" if self._total else f"{self.n}"
        pct = f" ({100 * self.n / self._total:.0f} %)" if self._total else ""
        eta = ""
        if self._total and rate > 0:
            eta = f", ETA {_duration((self._total - self.n) / rate)}"
        return f"progress {self.desc}: {done} {self.unit}{pct}, {rate:.3g} {self.unit}/s{eta}"

    def refresh(self) -> None:
        self._tq.refresh()

    def set_postfix(self, *args, **kwargs) -> None:
        self._tq.set_postfix(*args, **kwargs)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._tq.close()
        if not self.disable and self.n > self.start_n:
            elapsed = time.monotonic() - self.t0
            log.info(
                "progress %s: done, %d %s in %s",
                self.desc,
                self.n - self.start_n,
                self.unit,
                _duration(elapsed),
            )
