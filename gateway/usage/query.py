"""`GET /v1/usage` parameters, and the answer both usage stores give.

- `group_by`: a comma list of `feature`, `model`, `tier`, `key`, `user`, `day` (repeats are
  ignored; empty or absent: one row of totals).
- `from`: an ISO 8601 date (`2025-01-31`: that day's start, UTC) or datetime (`...T12:00:00Z`;
  one without an offset is UTC). Inclusive. Default: the start of the UTC day six days before
  `to`'s day, so the default window is the last seven UTC days, today included.
- `to`: likewise, exclusive; a date means the END of that day (`to=2025-01-31` includes the
  31st). Default: now.
- The window must not be empty or longer than `MAX_WINDOW_DAYS`.

Stores apply the window at their own granularity and answer with the window they actually
covered: Redis aggregates are per UTC day (a day counts whole when any of it is in the window),
the in-memory store per minute.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol

from gateway.usage.aggregate import GROUP_DIMS
from gateway.usage.record import format_ts

DEFAULT_DAYS = 7
MAX_WINDOW_DAYS = 400
GROUP_BY_CHOICES = ("feature", "model", "tier", "key", "user", "day")
assert frozenset(GROUP_BY_CHOICES) == GROUP_DIMS

# A `+hh:mm` offset arrives as ` hh:mm` when the client did not percent-encode the `+`.
_SPACE_OFFSET = re.compile(r"(T\d{2}(?::?\d{2}(?::?\d{2}(?:[.,]\d+)?)?)?) (\d{2}(?::?\d{2})?)$")


class UsageUnavailable(Exception):
    """The usage backend could not be read."""


class UsageQueryError(ValueError):
    """A bad query parameter: `param` names it, the message says what is wrong."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """A validated usage query: the window is [start, end), both aware UTC datetimes."""

    group_by: tuple[str, ...]
    start: datetime
    end: datetime

    @classmethod
    def from_params(cls, params: Mapping[str, str], now: datetime | None = None) -> UsageQuery:
        """Parse query parameters; raise UsageQueryError naming the bad one."""
        now = now if now is not None else datetime.now(UTC)
        group_by = parse_group_by(params.get("group_by"))
        raw_to = params.get("to")
        end = now if raw_to is None or raw_to.strip() == "" else parse_moment("to", raw_to, True)
        raw_from = params.get("from")
        if raw_from is None or raw_from.strip() == "":
            first_day = end.date() if end.time() != time(0) else end.date() - timedelta(days=1)
            try:
                start = _midnight(first_day - timedelta(days=DEFAULT_DAYS - 1))
            except OverflowError:
                raise UsageQueryError("to", "'to' is out of range") from None
        else:
            start = parse_moment("from", raw_from, False)
        if start >= end:
            raise UsageQueryError("from", "'from' must be before 'to'")
        if end - start > timedelta(days=MAX_WINDOW_DAYS):
            raise UsageQueryError("from", f"the window may span at most {MAX_WINDOW_DAYS} days")
        return cls(group_by, start, end)

    def days(self) -> list[str]:
        """The UTC days (YYYY-MM-DD) the window touches, oldest first."""
        first = self.start.date()
        last = (self.end - timedelta(microseconds=1)).date()
        return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]

    def answer(
        self, rows: list[dict[str, Any]], start: datetime, end: datetime, source: str
    ) -> dict[str, Any]:
        """The response body: OpenAI's list shape."""
        return {
            "object": "list",
            "group_by": list(self.group_by),
            "from": format_ts(start),
            "to": format_ts(end),
            "data": rows,
            "source": source,
        }


class UsageStore(Protocol):
    """What `/v1/usage` asks: the memory store or the Redis one."""

    async def query(self, q: UsageQuery, key_filter: str | None) -> dict[str, Any]:
        """Usage in the window, grouped; with `key_filter`, only that key's records."""
        ...


def parse_group_by(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    dims: list[str] = []
    for part in raw.split(","):
        dim = part.strip().lower()
        if not dim:
            continue
        if dim not in GROUP_BY_CHOICES:
            choices = ", ".join(GROUP_BY_CHOICES)
            raise UsageQueryError("group_by", f"unknown dimension {part.strip()!r}; use {choices}")
        if dim not in dims:
            dims.append(dim)
    return tuple(dims)


def parse_moment(param: str, raw: str, end_of_day: bool) -> datetime:
    """An ISO 8601 date or datetime as an aware UTC datetime. A date is its day's start, or
    with `end_of_day` the next day's start."""
    text = raw.strip()
    text = _SPACE_OFFSET.sub(r"\1+\2", text)
    if "T" not in text and "t" not in text and " " not in text:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            pass
        else:
            try:
                return _midnight(day + timedelta(days=1) if end_of_day else day)
            except OverflowError:
                raise UsageQueryError(param, f"{param!r} is out of range") from None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageQueryError(
            param, f"{param!r} must be an ISO 8601 date or datetime, got {raw!r}"
        ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)
