"""Cooldowns: a model that keeps failing is skipped for a while.

After `cooldown.failures` failures in a row a model is skipped for `cooldown.seconds`; then the
next request tries it again (half-open): a success resets it, a failure cools it down again at
once. The state lives beside the runtime, not in it, so it survives a config reload.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class _ModelHealth:
    failures: int = 0  # in a row
    cooling_until: float = 0.0
    last_failure: float = 0.0


class Cooldowns:
    """Per-model failure streaks and cooldown deadlines, for one process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._health: dict[str, _ModelHealth] = {}

    def available(self, model: str) -> bool:
        health = self._health.get(model)
        return health is None or self._clock() >= health.cooling_until

    def record_success(self, model: str) -> None:
        self._health.pop(model, None)

    def record_failure(self, model: str, threshold: int, seconds: float) -> bool:
        """Count a failure; True when it (re)starts the model's cooldown."""
        now = self._clock()
        health = self._health.setdefault(model, _ModelHealth())
        health.failures += 1
        health.last_failure = now
        if health.failures >= threshold:
            health.cooling_until = now + seconds
            return True
        return False

    def least_recently_failed(self, models: Iterable[str]) -> str:
        """Of models that are all cooling down, the one whose last failure is oldest."""
        return min(models, key=lambda m: self._health.get(m, _ModelHealth()).last_failure)

    def cooling(self) -> set[str]:
        now = self._clock()
        return {m for m, h in self._health.items() if now < h.cooling_until}
