"""SubjectQuota's in-memory bookkeeping under load: spent blocks at the front of its list are
passed over once, not on every admission, and ending one keeps the search right."""

from __future__ import annotations

from gateway.limits.base import LimitSpec
from gateway.limits.quota import LOCAL, QuotaLease, SubjectQuota

SPEC = LimitSpec(rpm=1_000_000, tpm=100_000_000)


def spent(ident: str, ends: float = 100.0) -> QuotaLease:
    lease = QuotaLease(ident, ends, 4, 400)
    lease.used_requests = 4
    return lease


def test_spent_and_ended_blocks_are_passed_over_once() -> None:
    quota = SubjectQuota(SPEC)
    for lease in (spent("a"), QuotaLease("old", 1.0, 4, 400), spent("b")):
        quota.add(lease)
    live = QuotaLease("live", 100.0, 4, 400)
    quota.add(live)
    admission = quota.take(10, 5.0, 60.0)
    assert admission is not None and admission.reservation == LOCAL + "live"
    assert quota.open_from == 3  # a, old (ended at 1.0) and b are behind the search now
    # Ending a lease before the search start moves it back by one: it still points at `live`.
    quota.end(quota.leases[0])
    assert quota.open_from == 2 and quota.leases[quota.open_from] is live
    for _ in range(3):
        assert quota.take(10, 5.0, 60.0) is not None
    assert quota.take(10, 5.0, 60.0) is None  # `live` spent too: no room, a block is needed
    assert quota.open_from == 3
    fresh = QuotaLease("fresh", 100.0, 4, 400)
    quota.add(fresh)
    assert quota.take(10, 5.0, 60.0).reservation == LOCAL + "fresh"  # type: ignore[union-attr]


def test_a_settle_corrects_its_own_lease_or_remembers_the_ended_one() -> None:
    quota = SubjectQuota(SPEC)
    lease = QuotaLease("l", 100.0, 4, 400)
    quota.add(lease)
    admission = quota.take(100, 5.0, 60.0)
    assert admission is not None
    quota.settle(admission, 30)
    assert lease.used_tokens == 30
    second = quota.take(100, 5.0, 60.0)
    assert second is not None
    quota.end(lease)
    quota.settle(second, 50)
    assert quota.corrections == {"l": -50}  # sent to Redis with the next tick
