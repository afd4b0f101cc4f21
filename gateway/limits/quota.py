"""Local quota leases: what one replica holds of a subject's Redis quota, to admit from in memory.

A per-request script call costs every request a round trip and wakes redis-server once per
request. Instead a replica takes a *block* of a subject's quota in one call (`lease.lua`): some
admissions (rpm), some tokens (tpm) and some concurrency slots, and admits from it with no I/O.

Why it stays exact (never more than the limit across replicas):
- A block's admissions and tokens are entries of the subject's logs in Redis from the moment
  they are granted, timed at the lease's END. The replica uses a block only until its own end
  (reckoned from before the call was sent, so never later than Redis's), so every admission
  made from it stays counted for at least a window after it was made: any rolling window
  counts at least what was really admitted in it.
- Slots are concurrency leases like any other, renewed while held; in-flight requests never
  outnumber the slots this replica holds.
- Near a limit blocks shrink (at most 1/8 of what is left, 1/64 of the limit) and below
  `LEAST_*` none is granted: admission goes request by request again, exact as before.

Unused quota goes back: when a lease ends (at most `lease_s`, 1 s, after it was taken), when the
subject nears its limit, when the replica stops, and free slots after `lease_s` idle. A request
refused while another replica's lease is still out waits for that lease's end and asks again
(`RedisLimiter`), so quota unused elsewhere is not lost to it. A replica killed outright loses
at most its blocks until they leave the window (its slots until their TTL).

This module is the bookkeeping, synchronous and without I/O; `RedisLimiter` does the calls.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from gateway.limits.base import Admission, LimitSpec

# A block is at most 1/DIVISOR of the limit (slots: 1/(DIVISOR/4)) and 1/SPLIT of what is left.
DIVISOR = 64
SPLIT = 8
BLOCK_REQUESTS = 64  # admissions asked for in one block
LEAST_REQUESTS = 16  # a block smaller than this is not worth a lease: request by request
BLOCK_SLOTS = 16
LEAST_SLOTS = 4
# Blocks are sized to last about this share of a lease at the rate admissions come.
BLOCK_SHARE = 0.25
LOCAL = "~"  # starts the lease id and reservation of an admission made from a block


def slot_divisor() -> int:
    return max(1, DIVISOR // 4)


def leasable(spec: LimitSpec) -> bool:
    """Whether the subject's limits are large enough for blocks at all (tpm is judged when a
    block is asked for, against the requests' token sizes). Small limits are admitted request
    by request: a key limited to under 1,024 rpm makes few calls anyway."""
    if spec.rpm is None and spec.tpm is None and spec.max_concurrent is None:
        return False
    if spec.rpm is not None and spec.rpm // DIVISOR < LEAST_REQUESTS:
        return False
    if spec.tpm is not None and spec.tpm // DIVISOR < LEAST_REQUESTS:  # under 16 tokens a block
        return False
    return spec.max_concurrent is None or spec.max_concurrent // slot_divisor() >= LEAST_SLOTS


@dataclass(slots=True)
class QuotaLease:
    ident: str
    ends: float  # event-loop time from which it is no longer used
    requests: int  # granted (0 when the subject has no rpm)
    tokens: int  # granted (0 when it has no tpm)
    used_requests: int = 0
    used_tokens: int = 0  # reservations, corrected to the real counts as requests settle


@dataclass(slots=True)
class SubjectQuota:
    """One subject's blocks in this replica, for the spec they were taken under."""

    spec: LimitSpec
    leases: list[QuotaLease] = field(default_factory=list)  # oldest first
    by_ident: dict[str, QuotaLease] = field(default_factory=dict)  # the same leases
    open_from: int = 0  # leases before this index are ended or out of admissions
    free_slots: list[str] = field(default_factory=list)
    held_slots: set[str] = field(default_factory=set)  # free and in use
    slots_used_at: float = 0.0
    slots_renewed_at: float = 0.0
    # The most slots in use at once since `peak_since`: free slots up to that are kept, so
    # that a load that comes and goes does not give slots back only to ask for them again.
    busy_peak: int = 0
    peak_since: float = 0.0
    asking: asyncio.Future[Any] | None = None  # a block asked for, not yet answered
    asked_at: float = 0.0
    takes: int = 0  # admissions from blocks since `asked_at`: the rate blocks are sized to
    waiting: int = 0  # requests waiting for a block: the next one is at least that large
    exact_until: float = 0.0  # near a limit: request by request until then
    requests_seen: int = 0  # Redis's counts at the last answer (every replica's blocks in)
    tokens_seen: int = 0
    avg_tokens: float = 0.0
    # What the leases held have not used (kept as they change: the headers need it on every
    # admission).
    unused_requests: int = 0
    unused_tokens: int = 0
    # Until `quiet_until`, and while `unused_*` stay above these floors, nothing the last
    # look found changes whether a block must be asked for (`RedisLimiter._ask_block`), so
    # an admission need not look again: see `quiet`. A block added or ended resets it.
    quiet_until: float = 0.0
    quiet_requests: int = 0
    quiet_tokens: int = 0
    block_requests: int = 0  # the size of the last block granted
    block_tokens: int = 0
    corrections: dict[str, int] = field(default_factory=dict)  # ended lease → tokens to add
    released_slots: list[str] = field(default_factory=list)  # to give back at the next tick

    def take(self, tokens: int, now: float, window_s: float) -> Admission | None:
        """An admission from the blocks, or None when they hold no room for it."""
        spec = self.spec
        lease: QuotaLease | None = None
        if spec.rpm is not None or spec.tpm is not None:
            leases = self.leases
            index = self.open_from
            while index < len(leases):
                candidate = leases[index]
                index += 1
                # Ended, or out of admissions (which only ever grow): never usable again, so
                # a lease at the front of the search moves it on. Under load a replica holds
                # dozens of spent blocks until the next tick gives them back, and each
                # admission would otherwise walk past all of them.
                if candidate.ends <= now or (
                    spec.rpm is not None and candidate.used_requests >= candidate.requests
                ):
                    if index - 1 == self.open_from:
                        self.open_from = index
                    continue
                if spec.tpm is not None and candidate.used_tokens + tokens > candidate.tokens:
                    continue
                lease = candidate
                break
            if lease is None:
                return None
        if spec.max_concurrent is not None and not self.free_slots:
            return None
        admission = Admission(allowed=True)
        self.takes += 1
        if spec.max_concurrent is not None:
            admission.lease_id = LOCAL + self.free_slots.pop()
            self.slots_used_at = now
            busy = len(self.held_slots) - len(self.free_slots)
            if busy > self.busy_peak:
                self.busy_peak = busy
        if lease is not None:
            lease.used_requests += 1
            self.unused_requests -= 1
            if spec.tpm is not None:
                lease.used_tokens += tokens
                self.unused_tokens -= tokens
                admission.reservation = LOCAL + lease.ident
                admission.reserved_tokens = tokens
                self.avg_tokens = (
                    tokens if not self.avg_tokens else 0.9 * self.avg_tokens + 0.1 * tokens
                )
            # The header values, inline (this runs for every admission from a block): what
            # Redis counted at its last answer (every replica's blocks as taken), less what
            # this replica has not used of its own: the room any replica may still find.
            # Another replica's admissions since that answer (at most one lease ago) are not
            # in it.
            left_s = lease.ends - now
            reset = window_s + left_s if left_s > 0.0 else window_s
            rpm = spec.rpm
            if rpm is not None:
                admission.requests_limit = rpm
                remaining = rpm - self.requests_seen + self.unused_requests
                admission.requests_remaining = (
                    0 if remaining < 0 else rpm if remaining > rpm else remaining
                )
                admission.requests_reset_s = reset
            tpm = spec.tpm
            if tpm is not None:
                admission.tokens_limit = tpm
                unused = self.unused_tokens
                remaining = tpm - self.tokens_seen + (unused if unused > 0 else 0)
                admission.tokens_remaining = (
                    0 if remaining < 0 else tpm if remaining > tpm else remaining
                )
                admission.tokens_reset_s = reset
        return admission

    def settle(self, admission: Admission, actual_tokens: int | None) -> None:
        """A request admitted from a block ended: its slot is free again here, and its tokens
        are corrected in its lease (or, when that ended, in Redis at the next tick)."""
        lease_id = admission.lease_id
        if lease_id is not None and lease_id.startswith(LOCAL):
            slot = lease_id[1:]
            if slot in self.held_slots:
                self.free_slots.append(slot)
            else:  # its block was given up while it ran
                self.released_slots.append(slot)
        reservation = admission.reservation
        if actual_tokens is None or reservation is None or not reservation.startswith(LOCAL):
            return
        delta = max(actual_tokens, 0) - admission.reserved_tokens
        if not delta:
            return
        ident = reservation[1:]
        lease = self.by_ident.get(ident)
        if lease is not None:
            lease.used_tokens += delta
            self.unused_tokens -= delta
            return
        self.corrections[ident] = self.corrections.get(ident, 0) + delta

    def add(self, lease: QuotaLease) -> None:
        self.leases.append(lease)
        self.by_ident[lease.ident] = lease
        self.unused_requests += lease.requests
        self.unused_tokens += lease.tokens
        self.block_requests, self.block_tokens = lease.requests, lease.tokens
        self.quiet_until = 0.0

    def end(self, lease: QuotaLease) -> None:
        """`lease` is no longer used (its rest goes back to Redis)."""
        index = self.leases.index(lease)
        del self.leases[index]
        if index < self.open_from:
            self.open_from -= 1
        self.by_ident.pop(lease.ident, None)
        self.unused_requests -= lease.requests - lease.used_requests
        self.unused_tokens -= lease.tokens - lease.used_tokens
        self.quiet_until = 0.0

    def room(self, now: float) -> tuple[int, int, float]:
        """Requests and tokens left in the live leases, and when the last of them ends."""
        requests = tokens = 0
        ends = 0.0
        for lease in self.leases:
            if lease.ends > now:
                requests += lease.requests - lease.used_requests
                tokens += lease.tokens - lease.used_tokens
                ends = max(ends, lease.ends)
        return requests, tokens, ends

    def first_end(self, now: float) -> float:
        """When the first live lease ends (its rest then leaves `room`)."""
        return min((lease.ends for lease in self.leases if lease.ends > now), default=now)

    def keep_quiet(self, until: float, requests: int, tokens: int) -> None:
        """The last look found no block needed with `requests` and `tokens` of room: it
        stays so until `until` while fewer than (room - half a block) are used."""
        self.quiet_until = until
        self.quiet_requests = self.unused_requests - requests + self.block_requests // 2
        self.quiet_tokens = self.unused_tokens - tokens + self.block_tokens // 2

    def quiet(self, now: float) -> bool:
        """Whether nothing can yet have changed what the last look decided (the room left
        and the time, as `keep_quiet` bounded them; free slots are counted now)."""
        if now >= self.quiet_until:
            return False
        spec = self.spec
        if spec.rpm is not None and self.unused_requests <= self.quiet_requests:
            return False
        if spec.tpm is not None and self.unused_tokens <= self.quiet_tokens:
            return False
        if spec.max_concurrent is not None:
            free = len(self.free_slots)
            if free < LEAST_SLOTS or free < (len(self.held_slots) - free) // 4:
                return False
        return True

    @property
    def busy_slots(self) -> int:
        return len(self.held_slots) - len(self.free_slots)

    @property
    def idle(self) -> bool:
        return not (
            self.leases
            or self.held_slots
            or self.corrections
            or self.released_slots
            or self.asking is not None
        )
