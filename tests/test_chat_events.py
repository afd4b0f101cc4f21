"""The decision about each event of a chat stream: content relayed unread, usage read (and a
usage-only chunk stripped when the client did not ask for usage), the end, in-band errors."""

from __future__ import annotations

import orjson
import pytest

from gateway.failures import FailureKind
from gateway.providers.base import Usage
from gateway.providers.chat_events import (
    CONTENT,
    DONE,
    EventKind,
    classify,
    failure_from_error_event,
    is_data,
    payload,
)


def data(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


DELTA = data({"choices": [{"index": 0, "delta": {"content": "hi"}}], "usage": None})
USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 2}}


@pytest.mark.parametrize("strip_usage", [True, False])
def test_a_content_delta_is_relayed_unread(strip_usage: bool) -> None:
    assert classify(DELTA, strip_usage=strip_usage) is CONTENT


def test_comments_and_keepalives_are_content() -> None:
    assert classify(b": keep-alive\n\n", strip_usage=True) is CONTENT
    assert not is_data(b": keep-alive\n\n")


def test_a_delta_that_mentions_the_words_is_still_content() -> None:
    """The text of a delta may contain "usage", "error" or "[DONE]": only the shape counts."""
    for text in ('the "usage" of words', 'an "error": here', "say [DONE] now"):
        event = data({"choices": [{"index": 0, "delta": {"content": text}}], "usage": None})
        assert classify(event, strip_usage=True).kind is EventKind.CONTENT


def test_done() -> None:
    assert classify(b"data: [DONE]\n\n", strip_usage=True) is DONE
    assert classify(b"data:[DONE]\r\n\r\n", strip_usage=True) is DONE


def test_a_usage_only_chunk_is_read_and_stripped_only_when_asked() -> None:
    event = data({"choices": [], "usage": USAGE})
    stripped = classify(event, strip_usage=True)
    kept = classify(event, strip_usage=False)
    assert stripped.kind is kept.kind is EventKind.USAGE
    assert stripped.usage == kept.usage == Usage(7, 3, 2)
    assert not stripped.relay and kept.relay


def test_usage_on_a_chunk_with_choices_is_never_stripped() -> None:
    event = data({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": USAGE})
    verdict = classify(event, strip_usage=True)
    assert verdict.kind is EventKind.USAGE and verdict.relay and verdict.usage == Usage(7, 3, 2)


def test_a_malformed_usage_object_reads_as_no_usage() -> None:
    verdict = classify(data({"choices": [], "usage": {"prompt_tokens": "7"}}), strip_usage=False)
    assert verdict.kind is EventKind.USAGE and verdict.usage is None


def test_usage_that_is_not_json_is_relayed_as_sent() -> None:
    assert classify(b'data: {"usage": {oops\n\n', strip_usage=True) is CONTENT


def test_an_error_event() -> None:
    event = data({"error": {"message": "overloaded", "type": "server_error"}})
    verdict = classify(event, strip_usage=True)
    assert verdict.kind is EventKind.ERROR and verdict.relay
    assert verdict.error is not None and "overloaded" in verdict.error


def test_a_multi_line_event_is_read_whole() -> None:
    event = (
        b'event: message\ndata: {"choices": [],\n'
        b'data: "usage": {"prompt_tokens": 1, "completion_tokens": 2}}\n\n'
    )
    assert payload(event) is not None
    verdict = classify(event, strip_usage=True)
    assert verdict.kind is EventKind.USAGE and verdict.usage == Usage(1, 2, 0)


def test_an_error_event_before_any_content_is_a_server_error_failure() -> None:
    failure = failure_from_error_event(b'{"error": {"message": "boom"}}', "up/gpt")
    assert failure.kind is FailureKind.SERVER_ERROR
    assert "boom" in failure.message and failure.upstream_error == {"message": "boom"}
    odd = failure_from_error_event(b'{"error": "just text"}', "up/gpt")
    assert odd.upstream_error == {"message": "just text"}
