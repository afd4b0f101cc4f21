"""`RequestLease`: everything one request holds, each with its own give-back.

Whatever a request takes (its runtime snapshot, a process slot, the in-flight gauge, the key's
and each model's limiter holds; later budget reservations and cache locks) is given back by a
function registered where it is taken, on the one lease the middleware makes per request. When
the request settles, the lease is closed with the request's outcome and every give-back runs,
newest first, exactly once. Only the module that takes a thing knows how to give it back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("gateway.lease")


@dataclass(slots=True)
class Outcome:
    """What a give-back may need to know about how the request ended: the tokens it used and
    what they cost in nano-dollars (a limiter corrects its token and budget reservations with
    them). Zero for a thing given back early, before any upstream answered with it."""

    tokens: int = 0
    cost: int = 0


NOTHING_USED = Outcome()

GiveBack = Callable[[Outcome], None]


class RequestLease:
    """The give-backs of one request. Give-backs are synchronous: settling never waits on I/O
    (a Redis limiter queues its settle for its next pipeline)."""

    __slots__ = ("_give_backs", "closed")

    def __init__(self) -> None:
        self._give_backs: list[GiveBack] = []
        self.closed = False

    def take(self, give_back: GiveBack) -> GiveBack:
        """Register what gives a thing just taken back. Returns `give_back`, the handle for
        `give_back_now`. A lease already closed (the request has settled) gives it back at
        once: nothing taken late is ever left held."""
        if self.closed:
            _run(give_back, NOTHING_USED)
        else:
            self._give_backs.append(give_back)
        return give_back

    def forget(self, give_back: GiveBack) -> bool:
        """Take `give_back` off the lease without running it, for a taker that gives its
        thing back itself, now; False when it was not (or no longer) on the lease."""
        try:
            self._give_backs.remove(give_back)
        except ValueError:
            return False
        return True

    def give_back_now(self, give_back: GiveBack, outcome: Outcome = NOTHING_USED) -> None:
        """Give one thing back before the request ends (a model that failed frees its room
        for others at once)."""
        if self.forget(give_back):
            _run(give_back, outcome)

    @property
    def held(self) -> int:
        """How many things are still held."""
        return len(self._give_backs)

    def close(self, outcome: Outcome) -> None:
        """Give everything back, newest first. Closing twice gives nothing back twice."""
        self.closed = True
        give_backs, self._give_backs = self._give_backs, []
        for give_back in reversed(give_backs):
            # Inlined `_run`: this runs for everything every request holds.
            try:
                give_back(outcome)
            except Exception:
                log.exception("giving back a request's hold failed")


def _run(give_back: GiveBack, outcome: Outcome) -> None:
    # One give-back that fails must not keep the others from running.
    try:
        give_back(outcome)
    except Exception:
        log.exception("giving back a request's hold failed")
