"""Reading a JSONL usage file while the gateway is still appending to it.

The sink appends each batch of whole lines with one `os.write`, but on Linux a concurrent
`read` of a regular file may see such a write half-copied: the last line can be cut short.
Only lines ending in a newline are complete; a cut one is read whole on the next poll."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any


def complete_records(path: Path) -> list[dict[str, Any]]:
    """The records of every complete line of `path` (none when it does not exist yet)."""
    if not path.exists():
        return []
    text = path.read_text()
    whole = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in whole.splitlines() if line]


async def wait_for_records(path: Path, count: int, polls: int = 250) -> list[dict[str, Any]]:
    """At least `count` complete records of `path`, polled every 20 ms."""
    for _ in range(polls):
        found = complete_records(path)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} usage records")
