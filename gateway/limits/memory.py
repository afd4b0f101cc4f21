"""The limiter of one process: exact sliding logs and expiring leases, in memory, no I/O.

Per subject:
- rpm: a log of admission times; an admission fits while fewer than `rpm` lie in the last
  window (`(now - window, now]`), so no 60-second span ever holds more than `rpm`.
- tpm: a log of reservations (their times, and their tokens, each numbered by its place in the
  subject's log) with a running sum; settle corrects a reservation in place while it is still
  inside the window. Plain floats and ints in deques: a busy key holds a minute of them (150k
  at 2,500 requests/s), and an object and a dict entry each would cost the garbage collector
  and the caches a tenth of the gateway's CPU.
- concurrency: leases `{lease_id: expiry}`; expired leases are dropped on every call for the
  subject.

Admission is one synchronous step (no await inside), so it is atomic under asyncio.

This module also holds the pure helpers the Redis backend shares: which refusal to report and
how long to wait.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from gateway.limits.base import WINDOW_S, Admission, Limiter, LimitSpec
from gateway.limits.budgets import (
    BudgetCharge,
    BudgetHold,
    BudgetState,
    first_refusing,
    keep_s,
)

# A retry lands just after the moment room frees, not on the edge (float rounding, clocks
# read a hair early).
RETRY_EPSILON_S = 0.001
# The least wait reported for concurrency. The earliest expiry is a bound, not a promise of
# the typical case: leases are usually released (settled) well before they expire.
MIN_CONCURRENCY_WAIT_S = 1.0
LIMIT_NAMES = ("requests", "tokens", "concurrency")


def choose_refusal(waits: Mapping[str, float], too_large: bool) -> tuple[str, float | None]:
    """The limit to report for a refused admission and its retry-after.

    A request larger than the whole tpm never fits: `tokens` with no retry-after. Otherwise
    the limit with the LONGEST wait is reported, since only after that wait do all of them
    have room (ties go to the first of requests, tokens, concurrency)."""
    if too_large:
        return "tokens", None
    limit = max((name for name in LIMIT_NAMES if name in waits), key=lambda name: waits[name])
    return limit, waits[limit]


def budget_refusal(charge: BudgetCharge) -> Admission:
    """A refusal by a spent budget: no retry-after, it stays so until its period resets."""
    admission = Admission(allowed=False, limit="budget")
    admission.extra["budget_scope"] = charge.scope
    admission.extra["budget_name"] = charge.name
    admission.extra["budget_period"] = charge.period
    return admission


def refused(waits: Mapping[str, float], too_large: bool) -> Admission:
    """A refusal carrying the limit that decided it and a retry-after a hair past the moment
    room frees (header fields are filled by the caller)."""
    limit, retry_after = choose_refusal(waits, too_large)
    if retry_after is not None:
        retry_after += RETRY_EPSILON_S
    admission = Admission(allowed=False, limit=limit, retry_after=retry_after)
    if too_large:
        admission.extra["too_large"] = "1"
    return admission


@dataclass(slots=True)
class _Subject:
    requests: deque[float] = field(default_factory=deque)
    reserved_at: deque[float] = field(default_factory=deque)  # the tpm log's times...
    reserved_tokens: deque[int] = field(default_factory=deque)  # ...and tokens, in step
    first_reservation: int = 0  # the number of the oldest reservation still in the log
    reserved: int = 0  # the sum of `reserved_tokens`
    leases: dict[str, float] = field(default_factory=dict)  # lease id → expiry
    # No lease expires before this: purging skips the scan of every lease until then.
    # Renewals only push expiries later, so it may be early, never late.
    next_expiry: float = math.inf

    def purge(self, now: float, window_s: float) -> None:
        cutoff = now - window_s
        requests = self.requests
        while requests and requests[0] <= cutoff:
            requests.popleft()
        reserved_at = self.reserved_at
        while reserved_at and reserved_at[0] <= cutoff:
            reserved_at.popleft()
            self.reserved -= self.reserved_tokens.popleft()
            self.first_reservation += 1
        if self.leases and now >= self.next_expiry:
            expired = [lease for lease, expiry in self.leases.items() if expiry <= now]
            for lease in expired:
                del self.leases[lease]
            self.next_expiry = min(self.leases.values(), default=math.inf)

    @property
    def empty(self) -> bool:
        return not (self.requests or self.reserved_at or self.leases)


class MemoryLimiter(Limiter):
    """rpm, tpm, concurrency and budgets for one process. `clock` (the windows and leases)
    and `wall_clock` (the UTC calendar of budget periods) are injectable for tests."""

    def __init__(
        self,
        *,
        lease_ttl_s: float = 60.0,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._ttl = lease_ttl_s
        self._window = window_s
        self._clock = clock
        self._wall_clock = wall_clock
        # budget counter → (nano-dollars spent and reserved, wall time it may be forgotten)
        self._spend: dict[str, tuple[int, float]] = {}
        self._subjects: dict[str, _Subject] = {}
        self._ids = itertools.count(1)
        self._subject_ranges = itertools.count(1)
        self._next_sweep = clock() + window_s

    def _sweep(self, now: float) -> None:
        """Forget subjects nobody asked about for a window (keys removed from the config)."""
        self._next_sweep = now + self._window
        for name in list(self._subjects):
            state = self._subjects[name]
            state.purge(now, self._window)
            if state.empty:
                del self._subjects[name]

    def _spent(self, counter: str, wall: float) -> int:
        held = self._spend.get(counter)
        if held is None:
            return 0
        if held[1] <= wall:  # an old period's counter
            del self._spend[counter]
            return 0
        return held[0]

    def _take_budgets(
        self, budgets: Sequence[BudgetCharge], cost: int, wall: float
    ) -> tuple[BudgetCharge | None, list[BudgetHold], list[BudgetState]]:
        """Reserve `cost` in every budget, or in none: (the refusing budget or None, what
        was reserved, each budget's standing)."""
        counters = [charge.counter(wall) for charge in budgets]
        used = [self._spent(counter, wall) for counter in counters]
        refusing = first_refusing(budgets, used, cost)
        if refusing is not None:
            states = [BudgetState(c.scope, c.limit, u) for c, u in zip(budgets, used, strict=True)]
            return refusing, [], states
        holds: list[BudgetHold] = []
        states = []
        for charge, counter, spent in zip(budgets, counters, used, strict=True):
            kept = keep_s(charge.period)
            self._spend[counter] = (spent + cost, math.inf if kept is None else wall + kept)
            holds.append(BudgetHold(charge.scope, counter, cost))
            states.append(BudgetState(charge.scope, charge.limit, spent + cost))
        return None, holds, states

    async def admit(
        self,
        subject: str,
        spec: LimitSpec,
        tokens: int,
        budgets: Sequence[BudgetCharge] = (),
        cost: int = 0,
    ) -> Admission:
        return self.admit_now(subject, spec, tokens, budgets, cost)

    def admit_now(
        self,
        subject: str,
        spec: LimitSpec,
        tokens: int,
        budgets: Sequence[BudgetCharge] = (),
        cost: int = 0,
    ) -> Admission:
        """Always answers: nothing here waits. Written as one straight path (the subject's
        lookup, its purge and the header values inline) because it runs for every request of
        a limited key, and each Python call on it costs about what the check itself does."""
        rpm, tpm, max_concurrent = spec.rpm, spec.tpm, spec.max_concurrent
        if rpm is None and tpm is None and max_concurrent is None and not budgets:
            return Admission(allowed=True)
        if tokens < 0:
            tokens = 0
        now = self._clock()
        window = self._window
        if now >= self._next_sweep:
            self._sweep(now)
        state = self._subjects.get(subject)
        if state is None:
            state = self._new_subject(subject)
        else:
            state.purge(now, window)
        requests = state.requests

        waits: dict[str, float] | None = None
        too_large = False
        if rpm is not None and len(requests) >= rpm:
            # The entry whose leaving brings the count below rpm.
            waits = {"requests": requests[len(requests) - rpm] + window - now}
        if tpm is not None:
            if tokens > tpm:
                too_large = True
            elif state.reserved + tokens > tpm:
                if waits is None:
                    waits = {}
                waits["tokens"] = self._tokens_wait(state, tpm, tokens, now, window)
        if max_concurrent is not None and len(state.leases) >= max_concurrent:
            expiries = sorted(state.leases.values())
            earliest = expiries[len(expiries) - max_concurrent]
            if waits is None:
                waits = {}
            waits["concurrency"] = max(earliest - now, MIN_CONCURRENCY_WAIT_S)

        budget_states: list[BudgetState] = []
        if waits is not None or too_large:
            admission = refused(waits or {}, too_large)
        elif budgets and (taken := self._take_budgets(budgets, cost, self._wall_clock()))[0]:
            refusing, _, budget_states = taken
            assert refusing is not None
            admission = budget_refusal(refusing)
        else:
            admission = Admission(allowed=True)
            if budgets:
                _, holds, budget_states = taken
                admission.budget_holds = tuple(holds)
            if rpm is not None:
                requests.append(now)
            if tpm is not None:
                # Logged under its number (settle corrects it by that number).
                reserved_at = state.reserved_at
                reserved_at.append(now)
                state.reserved_tokens.append(tokens)
                state.reserved += tokens
                admission.reservation = str(state.first_reservation + len(reserved_at) - 1)
                admission.reserved_tokens = tokens
            if max_concurrent is not None:
                ident = f"m{next(self._ids)}"
                expiry = now + self._ttl
                state.leases[ident] = expiry
                if expiry < state.next_expiry:
                    state.next_expiry = expiry
                admission.lease_id = ident
        if budget_states:
            admission.budgets = tuple(budget_states)
        # OpenAI's x-ratelimit-* values: what is left, and how long until the limit is back
        # to its initial state (the newest entry leaves the window).
        if rpm is not None:
            admission.requests_limit = rpm
            left = rpm - len(requests)
            admission.requests_remaining = left if left > 0 else 0
            reset = requests[-1] + window - now if requests else 0.0
            admission.requests_reset_s = reset if reset > 0.0 else 0.0
        if tpm is not None:
            admission.tokens_limit = tpm
            left = tpm - state.reserved
            admission.tokens_remaining = left if left > 0 else 0
            reset = (
                state.reserved_at[-1] + window - now
                if state.reserved_at and state.reserved > 0
                else 0.0
            )
            admission.tokens_reset_s = reset if reset > 0.0 else 0.0
        if not (requests or state.reserved_at or state.leases):  # `state.empty`, inlined
            del self._subjects[subject]
        return admission

    def _new_subject(self, subject: str) -> _Subject:
        # Reservations are numbered from a range of this subject's own: a settle that comes
        # after its subject was forgotten (and made again) can never correct another's.
        first = next(self._subject_ranges) << 40
        state = self._subjects[subject] = _Subject(first_reservation=first)
        return state

    @staticmethod
    def _tokens_wait(state: _Subject, tpm: int, tokens: int, now: float, window: float) -> float:
        """How long until `tokens` more fit under `tpm`: when enough of the oldest
        reservations have left the window."""
        freed = 0
        for at, reserved in zip(state.reserved_at, state.reserved_tokens, strict=True):
            freed += reserved
            if state.reserved - freed + tokens <= tpm:
                return at + window - now
        return window  # only reached if the log is inconsistent; a window frees it all

    async def settle(
        self,
        subject: str,
        admission: Admission,
        actual_tokens: int | None,
        actual_cost: int | None = None,
    ) -> None:
        self.settle_nowait(subject, admission, actual_tokens, actual_cost)

    def settle_nowait(
        self,
        subject: str,
        admission: Admission,
        actual_tokens: int | None,
        actual_cost: int | None = None,
    ) -> None:
        if actual_cost is not None:
            for hold in admission.budget_holds:
                held = self._spend.get(hold.counter)
                if held is not None:  # else its period is long over: nothing to correct
                    self._spend[hold.counter] = (
                        held[0] + max(actual_cost, 0) - hold.reserved,
                        held[1],
                    )
        state = self._subjects.get(subject)
        if state is None:
            return
        if admission.lease_id is not None:
            state.leases.pop(admission.lease_id, None)
        if actual_tokens is not None and admission.reservation is not None:
            # Reservation `number` used `actual_tokens`; nothing when it has left the window
            # already. A settle comes soon after its admission, so the deque is indexed near
            # its end. No purge here: the subject's next admission (or the sweep) does it.
            index = int(admission.reservation) - state.first_reservation
            logged = state.reserved_tokens
            if 0 <= index < len(logged):
                used = actual_tokens if actual_tokens > 0 else 0
                state.reserved += used - logged[index]
                logged[index] = used

    async def renew(self, leases: list[tuple[str, str]]) -> None:
        now = self._clock()
        for subject, lease_id in leases:
            state = self._subjects.get(subject)
            if state is None:
                continue
            state.purge(now, self._window)
            # An expired lease is not revived: its slot may have been given to another.
            if lease_id in state.leases:
                state.leases[lease_id] = now + self._ttl

    async def budget_used(self, budgets: Sequence[tuple[str, BudgetCharge]]) -> list[int]:
        wall = self._wall_clock()
        return [self._spent(charge.counter(wall), wall) for _, charge in budgets]

    async def in_flight(self, subject: str) -> int:
        state = self._subjects.get(subject)
        if state is None:
            return 0
        state.purge(self._clock(), self._window)
        return len(state.leases)

    async def ping(self) -> None:
        return None
