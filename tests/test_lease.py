"""`RequestLease`: every give-back runs once, newest first, whatever else fails."""

from __future__ import annotations

import logging

import pytest

from gateway.pipeline.lease import Outcome, RequestLease


def test_close_gives_everything_back_newest_first_with_the_outcome() -> None:
    lease = RequestLease()
    seen: list[tuple[str, int]] = []
    lease.take(lambda o: seen.append(("runtime", o.tokens)))
    lease.take(lambda o: seen.append(("slot", o.tokens)))
    lease.take(lambda o: seen.append(("key", o.tokens)))
    assert lease.held == 3
    lease.close(Outcome(42))
    assert seen == [("key", 42), ("slot", 42), ("runtime", 42)]
    assert lease.held == 0


def test_closing_twice_gives_nothing_back_twice() -> None:
    lease = RequestLease()
    calls: list[int] = []
    lease.take(lambda o: calls.append(1))
    lease.close(Outcome(1))
    lease.close(Outcome(1))
    assert calls == [1]


def test_a_thing_taken_after_the_lease_closed_is_given_back_at_once() -> None:
    lease = RequestLease()
    lease.close(Outcome(5))
    calls: list[int] = []
    lease.take(lambda o: calls.append(o.tokens))
    assert calls == [0] and lease.held == 0


def test_give_back_now_runs_once_and_leaves_the_rest() -> None:
    lease = RequestLease()
    calls: list[str] = []
    model = lease.take(lambda o: calls.append("model"))
    lease.take(lambda o: calls.append("key"))
    lease.give_back_now(model)
    lease.give_back_now(model)
    assert calls == ["model"]
    lease.close(Outcome())
    assert calls == ["model", "key"]


def test_forget_takes_a_give_back_off_without_running_it() -> None:
    lease = RequestLease()
    calls: list[str] = []
    model = lease.take(lambda o: calls.append("model"))
    assert lease.forget(model)
    assert not lease.forget(model)
    lease.close(Outcome())
    assert calls == []


def test_a_failing_give_back_does_not_keep_the_others(caplog: pytest.LogCaptureFixture) -> None:
    lease = RequestLease()
    calls: list[str] = []

    def broken(_: Outcome) -> None:
        raise RuntimeError("limiter gone")

    lease.take(lambda o: calls.append("first"))
    lease.take(broken)
    lease.take(lambda o: calls.append("last"))
    with caplog.at_level(logging.ERROR, logger="gateway.lease"):
        lease.close(Outcome())
    assert calls == ["last", "first"]
    assert "giving back" in caplog.text
