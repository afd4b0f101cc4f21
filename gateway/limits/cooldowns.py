"""Cooldowns: a model that keeps failing is skipped for a while.

After `cooldown.failures` failures in a row a model is skipped for `cooldown.seconds`; then the
next request tries it again (half-open): a success resets it, a failure cools it down again at
once. The store lives beside the runtime, not in it, so it survives a config reload. With
`limits.backend: redis` the store is in Redis and every replica sees the same cooldowns.

Times are the store's own clock (Redis `TIME` for Redis), so replicas need no synchronised
clocks: a store answers "is it cooling now" itself.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelHealth:
    failures: int  # in a row
    cooling: bool  # skipped now
    last_failure: float  # the store's clock


HEALTHY = ModelHealth(0, False, 0.0)


class CooldownStore(abc.ABC):
    @abc.abstractmethod
    async def health(self, models: Sequence[str]) -> dict[str, ModelHealth]:
        """The health of each model; models never failed may be absent (healthy).
        Raises on a backend failure; callers then treat every model as healthy."""

    @abc.abstractmethod
    async def record_failure(self, model: str, threshold: int, seconds: float) -> bool:
        """Count a failure; True when it (re)starts the model's cooldown."""

    @abc.abstractmethod
    async def record_success(self, model: str) -> None:
        """Reset the model's failure streak."""

    @abc.abstractmethod
    async def cooling(self) -> set[str]:
        """Every model cooling down now."""

    async def aclose(self) -> None:  # noqa: B027 - the memory store holds nothing
        """Release connections."""


@dataclass(slots=True)
class _Streak:
    failures: int = 0
    cooling_until: float = 0.0
    last_failure: float = 0.0


class MemoryCooldowns(CooldownStore):
    """Cooldowns of one process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._streaks: dict[str, _Streak] = {}

    async def health(self, models: Sequence[str]) -> dict[str, ModelHealth]:
        now = self._clock()
        out = {}
        for model in models:
            streak = self._streaks.get(model)
            if streak is not None:
                out[model] = ModelHealth(
                    streak.failures, now < streak.cooling_until, streak.last_failure
                )
        return out

    async def record_failure(self, model: str, threshold: int, seconds: float) -> bool:
        now = self._clock()
        streak = self._streaks.setdefault(model, _Streak())
        streak.failures += 1
        streak.last_failure = now
        if streak.failures >= threshold:
            streak.cooling_until = now + seconds
            return True
        return False

    async def record_success(self, model: str) -> None:
        self._streaks.pop(model, None)

    async def cooling(self) -> set[str]:
        now = self._clock()
        return {m for m, s in self._streaks.items() if now < s.cooling_until}
