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


def test_quiet_holds_until_half_a_block_is_used_or_its_time_runs_out() -> None:
    """What lets an admission skip the "ask for the next block?" look: it ends exactly when
    that look would find half a block used, a lease about to end, or a block added."""
    quota = SubjectQuota(SPEC)
    quota.add(QuotaLease("l", 100.0, 10, 1000))
    # The look found 10 requests and 1000 tokens of room; it holds until 40.0.
    quota.keep_quiet(40.0, 10, 1000)
    for _ in range(4):
        assert quota.quiet(5.0)
        assert quota.take(10, 5.0, 60.0) is not None
    assert quota.quiet(5.0)  # 6 requests left: more than half a block (5)
    assert quota.take(10, 5.0, 60.0) is not None
    assert not quota.quiet(5.0)  # 5 left: the look would ask for the next block now
    quota.keep_quiet(40.0, 5, 950)
    assert not quota.quiet(5.0)
    # Tokens: a settle that used more than reserved counts against the floor.
    quota = SubjectQuota(SPEC)
    quota.add(QuotaLease("t", 100.0, 1000, 1000))
    quota.keep_quiet(40.0, 1000, 1000)
    admission = quota.take(100, 5.0, 60.0)
    assert admission is not None and quota.quiet(5.0)
    quota.settle(admission, 450)  # 550 tokens left of 1000: still over half
    assert quota.quiet(5.0)
    second = quota.take(60, 5.0, 60.0)
    assert second is not None and not quota.quiet(5.0)  # 490 left
    # Time, and a block added or ended.
    quota = SubjectQuota(SPEC)
    quota.add(QuotaLease("a", 100.0, 100, 10_000))
    quota.keep_quiet(40.0, 100, 10_000)
    assert quota.quiet(39.9) and not quota.quiet(40.0)
    quota.add(QuotaLease("b", 100.0, 100, 10_000))
    assert not quota.quiet(5.0)
    quota.keep_quiet(40.0, 200, 20_000)
    quota.end(quota.leases[0])
    assert not quota.quiet(5.0)


def test_quiet_counts_free_slots_as_they_are() -> None:
    quota = SubjectQuota(LimitSpec(max_concurrent=100_000))
    slots = [str(n) for n in range(8)]
    quota.free_slots[:] = slots
    quota.held_slots.update(slots)
    quota.keep_quiet(40.0, 0, 0)
    taken = []
    for _ in range(5):
        assert quota.quiet(5.0)
        admission = quota.take(0, 5.0, 60.0)
        assert admission is not None
        taken.append(admission)
    assert not quota.quiet(5.0)  # 3 free: fewer than LEAST_SLOTS, slots are asked for
    quota.settle(taken[0], None)
    assert quota.quiet(5.0)
