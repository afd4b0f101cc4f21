"""Splitting an upstream's byte stream into whole SSE events, however the bytes arrive."""

from __future__ import annotations

import random

import pytest

from gateway.sse import EventSplitter, event_data

EVENTS = [
    b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n',
    b": a comment\n\n",
    b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n',
    b"event: message\ndata: line one\ndata: line two\n\n",
    b"data: [DONE]\n\n",
]


def split_all(chunks: list[bytes]) -> tuple[list[bytes], bytes]:
    splitter = EventSplitter()
    events: list[bytes] = []
    for chunk in chunks:
        events.extend(splitter.feed(chunk))
    return events, splitter.pending()


def test_one_event_per_read_comes_back_as_is() -> None:
    events, pending = split_all(EVENTS)
    assert events == EVENTS and pending == b""


def test_several_events_in_one_read() -> None:
    events, pending = split_all([b"".join(EVENTS)])
    assert events == EVENTS and pending == b""


@pytest.mark.parametrize("seed", range(20))
def test_any_split_of_the_bytes_gives_the_same_events(seed: int) -> None:
    rng = random.Random(seed)
    raw = b"".join(EVENTS)
    cuts = sorted(rng.sample(range(1, len(raw)), rng.randint(1, 40)))
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    events, pending = split_all(chunks)
    assert events == EVENTS and pending == b""


def test_byte_by_byte() -> None:
    raw = b"".join(EVENTS)
    events, pending = split_all([raw[i : i + 1] for i in range(len(raw))])
    assert events == EVENTS and pending == b""


def test_a_short_read_is_not_an_event() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"d") == []
    assert splitter.feed(b"ata: x\n") == []
    assert splitter.feed(b"\n") == [b"data: x\n\n"]


def test_crlf_and_cr_line_endings() -> None:
    raw = b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"
    events, pending = split_all([raw])
    assert events == [b"data: a\r\n\r\n", b"data: b\r\r", b"data: c\n\n"]
    assert [event_data(e) for e in events] == [b"a", b"b", b"c"]
    assert pending == b""


def test_an_unterminated_tail_stays_pending() -> None:
    events, pending = split_all([b"data: a\n\ndata: b"])
    assert events == [b"data: a\n\n"] and pending == b"data: b"


def test_multi_line_data_is_joined() -> None:
    assert event_data(EVENTS[3]) == b"line one\nline two"
    assert event_data(EVENTS[1]) is None
