"""Peak-memory sampling shared by the benchmark scripts."""

from __future__ import annotations

import threading
from typing import Callable


class PeakSampler:
    """Calls ``measure()`` every ``interval`` seconds in a thread; ``peak`` keeps the maximum.

    ``measure`` returns a number or a dict of numbers (maxima kept per key).
    """

    def __init__(self, measure: Callable[[], object], interval: float = 0.05):
        self.measure, self.interval = measure, interval
        self.peak = measure()

    def _update(self) -> None:
        value = self.measure()
        if isinstance(value, dict):
            self.peak = {k: max(v, self.peak.get(k, v)) for k, v in value.items()}
        else:
            self.peak = max(self.peak, value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._update()

    def __enter__(self) -> "PeakSampler":
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._update()
