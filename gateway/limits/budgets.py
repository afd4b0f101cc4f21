"""Budgets as the limiters hold them: USD caps counted in integer nano-dollars per period.

A request reserves its worst-case cost in every budget that applies to it, in the same atomic
admission as its key's rpm/tpm/concurrency; settling replaces the reservation with the real
cost. A budget's counter is named by its scope, its name and its period: `day` periods are
UTC dates (`2026-12-07`), `month` periods UTC months (`2026-12`), `total` never changes. A new
period is a new counter, so a budget resets at the boundary without anything having to run; a
reservation remembers its counter, so a request that began before midnight settles there.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Period = Literal["day", "month", "total"]
NANO_PER_USD = 1_000_000_000
# How long a period's counter is kept after its period could have begun: past its end, and
# long enough for `GET /admin/keys`-style readers to show the last period.
_KEEP_S = {"day": 2 * 86_400, "month": 32 * 86_400}


def to_nano(usd: float) -> int:
    """USD as integer nano-dollars (costs are exact to 1e-10 USD, budgets to 1e-9)."""
    return round(usd * NANO_PER_USD)


def from_nano(nano: int) -> float:
    return nano / NANO_PER_USD


def period_id(period: Period, epoch_s: float) -> str:
    """The UTC calendar period `epoch_s` falls in."""
    if period == "total":
        return "total"
    moment = time.gmtime(epoch_s)
    if period == "day":
        return f"{moment.tm_year:04d}-{moment.tm_mon:02d}-{moment.tm_mday:02d}"
    return f"{moment.tm_year:04d}-{moment.tm_mon:02d}"


def keep_s(period: Period) -> float | None:
    """How long a period's counter lives (None: for ever)."""
    return _KEEP_S.get(period)


@dataclass(frozen=True, slots=True)
class BudgetCharge:
    """One budget a request must fit: `scope` is `key`, `feature` or `total`; `name` the key's
    or feature's name (`total` for the total); `limit` the cap in nano-dollars."""

    scope: str
    name: str
    limit: int
    period: Period

    def counter(self, epoch_s: float) -> str:
        """The counter this budget's spend is kept in for the period `epoch_s` is in."""
        return f"{self.scope}:{self.name}:{period_id(self.period, epoch_s)}"


@dataclass(frozen=True, slots=True)
class BudgetHold:
    """What one admission took from one budget: the counter and the nano-dollars reserved."""

    scope: str
    counter: str
    reserved: int


@dataclass(frozen=True, slots=True)
class BudgetState:
    """A budget's standing right after an admission was judged: its cap and what is spent
    and reserved in its current period (the admission's own reservation included)."""

    scope: str
    limit: int
    used: int

    @property
    def remaining_usd(self) -> float:
        return from_nano(max(0, self.limit - self.used))


def first_refusing(
    charges: Sequence[BudgetCharge], used: Sequence[int], cost: int
) -> BudgetCharge | None:
    """The first budget the request does not fit (spent + reserved + its worst case over the
    cap), or None when it fits all."""
    for charge, spent in zip(charges, used, strict=True):
        if spent + cost > charge.limit:
            return charge
    return None


def period_end(period: str, epoch_s: float) -> str | None:
    """When the period `epoch_s` falls in ends, as ISO 8601 UTC (None for `total`)."""
    if period not in ("day", "month"):
        return None
    moment = time.gmtime(epoch_s)
    if period == "day":
        start = calendar.timegm((moment.tm_year, moment.tm_mon, moment.tm_mday, 0, 0, 0))
        end = time.gmtime(start + 86_400)
    else:
        year, month = (
            (moment.tm_year + 1, 1) if moment.tm_mon == 12 else (moment.tm_year, moment.tm_mon + 1)
        )
        end = time.gmtime(calendar.timegm((year, month, 1, 0, 0, 0)))
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", end)
