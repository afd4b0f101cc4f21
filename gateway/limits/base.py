"""The limiter protocol: admission with rpm, tpm and concurrency leases, then settlement.

A *subject* is whatever a limit belongs to: `key:<key name>` for a gateway key's plan,
`model:<model name>` for a model's own limits. Each admission is one atomic decision over all
of the subject's limits: either everything is taken (a request counted in the rolling minute,
tokens reserved, a concurrency lease held) or nothing is.

- `rpm`: at most that many admissions in ANY rolling 60 s (a sliding log: no double burst at
  a window edge).
- `tpm`: at most that many tokens in any rolling 60 s. Admission reserves an estimate; settle
  replaces it with the real count, so a request that used fewer tokens gives the rest back.
- `max_concurrent`: leases with an expiry. A lease is released on settle, renewed while a long
  request lives, and expires by itself if the process holding it dies.
- budgets (`gateway.limits.budgets`): USD caps per period. Admission reserves the request's
  worst-case cost in each; settle replaces it with the real cost.
Redis backends use Redis `TIME` as the clock, never the replica's.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.limits.budgets import BudgetCharge, BudgetHold, BudgetState

WINDOW_S = 60.0


class LimiterUnavailable(Exception):
    """The backend could not be asked (Redis down, timed out). `limits.on_backend_error`
    decides whether the request is served anyway."""


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """The limits of one subject; None means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None

    @property
    def empty(self) -> bool:
        return self.rpm is None and self.tpm is None and self.max_concurrent is None


def nothing_to_ask(spec: LimitSpec, budgets: Sequence[BudgetCharge]) -> bool:
    return spec.empty and not budgets


@dataclass(slots=True)
class Admission:
    """The answer to one admission.

    When refused, `limit` is `requests`, `tokens` or `concurrency` and `retry_after` is a true
    wait: retrying after that long succeeds unless others took the room first. It is None
    when the request can never fit (more tokens than `tpm` on its own; then
    `extra["too_large"]` is set) and for `budget` (a spent budget stays so until its period
    resets; `extra["budget_scope"]` says which). For concurrency it is an upper bound: the
    earliest lease expiry, though leases are usually given back sooner. When allowed,
    `lease_id` names the concurrency lease (None when the subject has no concurrency limit) and
    `reservation` what settle needs to correct the token reservation.
    """

    allowed: bool
    limit: str | None = None
    retry_after: float | None = None
    lease_id: str | None = None
    reserved_tokens: int = 0
    reservation: str | None = None  # backend-specific handle of the token reservation
    # For OpenAI's x-ratelimit-* headers (None where the subject has no such limit):
    requests_limit: int | None = None
    requests_remaining: int | None = None
    requests_reset_s: float | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset_s: float | None = None
    budget_holds: tuple[BudgetHold, ...] = ()  # what settle corrects to the real cost
    budgets: tuple[BudgetState, ...] = ()  # each budget as judged (for the remaining header)
    extra: dict[str, str] = field(default_factory=dict)


class Limiter(abc.ABC):
    """One backend for every subject."""

    @abc.abstractmethod
    async def admit(
        self,
        subject: str,
        spec: LimitSpec,
        tokens: int,
        budgets: Sequence[BudgetCharge] = (),
        cost: int = 0,
    ) -> Admission:
        """Take one request (and `tokens` reserved, and a lease, and `cost` nano-dollars in
        each of `budgets`) for `subject`, or refuse: all or nothing. Raises LimiterUnavailable
        when the backend cannot be asked."""

    def admit_now(
        self,
        subject: str,
        spec: LimitSpec,
        tokens: int,
        budgets: Sequence[BudgetCharge] = (),
        cost: int = 0,
    ) -> Admission | None:
        """`admit` answered at once, when the backend can decide without waiting on I/O (the
        memory backend always can); None means: await `admit`. Spares the common admission a
        coroutine. Raises LimiterUnavailable like `admit`."""
        return None

    @abc.abstractmethod
    async def settle(
        self,
        subject: str,
        admission: Admission,
        actual_tokens: int | None,
        actual_cost: int | None = None,
    ) -> None:
        """The request ended: release its lease, and correct its token reservation to
        `actual_tokens` and its budget reservations to `actual_cost` nano-dollars (None: keep
        the reservation as it was). Never raises: a failure is logged and left to expiry."""

    @abc.abstractmethod
    def settle_nowait(
        self,
        subject: str,
        admission: Admission,
        actual_tokens: int | None,
        actual_cost: int | None = None,
    ) -> None:
        """`settle` without the caller awaiting anything: done at once (memory) or queued to
        be sent (Redis), so a request's end needs no background task. Never raises."""

    @abc.abstractmethod
    async def renew(self, leases: list[tuple[str, str]]) -> None:
        """Extend the expiry of live leases, given as (subject, lease_id). Called
        periodically for every lease this process holds, so a long stream keeps its lease
        and a dead process's leases expire."""

    @abc.abstractmethod
    async def budget_used(self, budgets: Sequence[tuple[str, BudgetCharge]]) -> list[int]:
        """For each (subject, budget): nano-dollars spent and reserved in its current period.
        Raises LimiterUnavailable when the backend cannot be asked."""

    @abc.abstractmethod
    async def in_flight(self, subject: str) -> int:
        """Leases currently held for `subject` (expired ones not counted)."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise LimiterUnavailable when the backend cannot be asked."""

    async def aclose(self) -> None:  # noqa: B027 - the memory backend holds nothing
        """Release connections."""
