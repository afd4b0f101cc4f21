"""What the fake upstreams share for mid-stream failures: one known answer (`STORY`) that a
fault cuts short, and how a fake answers a request to continue it, deterministically, so a
test can assert the exact text the client assembles.

A continuation request is recognised by its shape, as a real model would read it: the last
assistant turn is a prefix of `STORY`, either the conversation's last message (a prefill) or
followed by one user turn (the instruction to continue). The answer is the rest of `STORY`;
when the request mentions `overlap` (the fault names `*_overlap`), it first repeats the last
`OVERLAP` characters of the prefix, as models asked to continue sometimes do, so the gateway's
seam trimming is exercised.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from tests.fakes.openai_upstream import Behaviour

STORY = (
    "Once upon a time, a small gateway carried every word from the models to the apps, "
    "and not one of them was ever lost on the way."
)
OVERLAP = 14  # characters a `*_overlap` continuation repeats
CUT_AFTER_WORDS = 5  # the faults cut the story after this many words


async def paced_or_reset(i: int, behaviour: Behaviour, request: web.Request) -> bool:
    """Before a fake stream's event `i`: its pace, and the faults every OpenAI-style fake
    stream shares. True when the connection was reset (the handler ends there); a stall is
    60 s of silence, which the gateway's idle timeout ends first."""
    if i and behaviour.pace_s:
        await asyncio.sleep(behaviour.pace_s)
    if i == behaviour.reset_after_events:
        assert request.transport is not None
        request.transport.abort()
        return True
    if i == behaviour.stall_after_events:
        await asyncio.sleep(60)
    return False


def words(text: str) -> list[str]:
    """`text` in word-sized pieces, each with its leading whitespace, as models stream."""
    return re.findall(r"\s*\S+", text)


def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for block in content:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                texts.append(block["text"])
        if texts:
            return "".join(texts)
    return None


def continuation_of(body: dict[str, Any]) -> str | None:
    """The text a continuation request gets (None: it is not one)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        return None
    last = messages[-1]
    if last.get("role") == "assistant":
        assistant = last
    elif messages[-2].get("role") == "assistant" and "continue" in str(last.get("content")).lower():
        assistant = messages[-2]
    else:
        return None
    prefix = _text_of(assistant.get("content"))
    if not prefix or not STORY.startswith(prefix):
        return None
    rest = STORY[len(prefix) :]
    if "overlap" in str(messages[0].get("content")):
        rest = prefix[-OVERLAP:] + rest
    return rest
