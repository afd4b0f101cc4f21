"""The JSONL usage sink: an append-only file, one record per line, whole lines only.

Each batch is encoded into one buffer of whole lines and appended with one `os.write` on an
`O_APPEND` descriptor, then fsynced (by default), in a worker thread so the event loop never
waits on the disk. A crash loses at most the batch being written.

Rotation happens between batches, never inside one: by size (`max_bytes`) and, when
`rotate_daily`, at the first write of a new UTC day. The current file `usage.jsonl` is renamed
to `usage.<day>.jsonl` (then `usage.<day>.1.jsonl`, ...), `<day>` being the day the file was
begun, and a new file is started.

The kernel may cut a large write short when the process is killed inside it (it checks for
fatal signals between pages), leaving a partial last line. Opening the file repairs that: an
unterminated tail that is not a whole record is truncated away (and logged). Readers
(`read_records`) skip malformed lines and count them, so a file is readable either way.

One file belongs to one process: replicas each need their own path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from gateway.usage.record import UsageRecord, parse_ts
from gateway.usage.sinks import UsageSink

log = logging.getLogger("gateway.usage")

MiB = 1024 * 1024
_TAIL_CHUNK = 64 * 1024


def _utc_now() -> datetime:
    return datetime.now(UTC)


def encode_lines(records: list[UsageRecord]) -> bytes:
    """The batch as one buffer of whole lines, each ending in a newline."""
    return b"".join(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE) for rec in records)


class JsonlSink(UsageSink):
    """Appends batches of records to a JSONL file, rotating it by size and by day."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int | None = 100 * MiB,
        rotate_daily: bool = True,
        fsync: bool = True,
        clock: Callable[[], datetime] = _utc_now,
        name: str = "jsonl",
    ) -> None:
        self.name = name
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.rotate_daily = rotate_daily
        self.fsync = fsync
        self.clock = clock
        self.rotations = 0
        self.repaired_bytes = 0  # bytes of partial last lines cut away when opening
        self._fd: int | None = None
        self._size = 0
        self._day = ""  # the UTC day the current file was begun
        self._lock = threading.Lock()  # a timed-out write may still run in its thread

    async def write(self, records: list[UsageRecord]) -> None:
        if records:
            # Encoding in the thread too keeps the event loop's share of a batch small.
            await asyncio.to_thread(self._encode_and_write, records)

    def _encode_and_write(self, records: list[UsageRecord]) -> None:
        self.write_sync(encode_lines(records))

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close_sync)

    # --- blocking parts, run in a worker thread --------------------------------------------

    def write_sync(self, buf: bytes) -> None:
        """Append `buf` (whole lines) to the current file, rotating first when due."""
        with self._lock:
            if self._fd is None:
                self._open()
            assert self._fd is not None
            today = _day_of(self.clock())
            if self._size > 0 and (
                (self.rotate_daily and self._day != today)
                or (self.max_bytes is not None and self._size + len(buf) > self.max_bytes)
            ):
                self._rotate()
            if self._size == 0:
                self._day = today
            try:
                view = memoryview(buf)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError:
                # Part of the buffer may be in the file: repair the tail before the next write.
                self._close_fd()
                raise
            self._size += len(buf)
            if self.fsync:
                os.fsync(self._fd)

    def close_sync(self) -> None:
        with self._lock:
            self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            stat = os.fstat(fd)
            self._size = _repair_tail(fd, stat.st_size, self.path)
            self.repaired_bytes += max(0, stat.st_size - self._size)
            self._day = _day_of(datetime.fromtimestamp(stat.st_mtime, UTC))
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _rotate(self) -> None:
        if self.fsync and self._fd is not None:
            os.fsync(self._fd)
        self._close_fd()
        target = _free_rotated_name(self.path, self._day)
        os.rename(self.path, target)
        if self.fsync:
            _fsync_dir(self.path.parent)
        self.rotations += 1
        log.info("usage file rotated", extra={"path": str(self.path), "to": str(target)})
        self._open()


def _day_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


def _repair_tail(fd: int, size: int, path: Path) -> int:
    """Make the file end in a whole line; return its size afterwards.

    An unterminated tail that parses as a record only lacks its newline, which is added;
    anything else is the partial line of an interrupted write and is cut away."""
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    start = size
    while start > 0:
        start = max(0, start - _TAIL_CHUNK)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            start += newline + 1
            break
        end = start
    tail = os.pread(fd, size - start, start)
    try:
        UsageRecord.from_json(tail)
    except ValueError:
        os.ftruncate(fd, start)
        log.warning(
            "usage file ended in a partial line; removed it",
            extra={"path": str(path), "bytes": size - start},
        )
        return start
    os.write(fd, b"\n")
    return size + 1


def _rotated_pattern(path: Path) -> re.Pattern[str]:
    return re.compile(
        rf"^{re.escape(path.stem)}\.(\d{{4}}-\d{{2}}-\d{{2}})(?:\.(\d+))?{re.escape(path.suffix)}$"
    )


def _free_rotated_name(path: Path, day: str) -> Path:
    n = 0
    while True:
        middle = day if n == 0 else f"{day}.{n}"
        candidate = path.with_name(f"{path.stem}.{middle}{path.suffix}")
        if not candidate.exists():
            return candidate
        n += 1


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory; the rename stands anyway
        pass
    finally:
        os.close(fd)


# --- reading ----------------------------------------------------------------------------------


@dataclass(slots=True)
class ReadStats:
    files: int = 0
    records: int = 0
    malformed: int = 0  # lines that are not a record: partial, corrupt, or not JSON
    skipped: int = 0  # records older than `since`


def usage_files(path: str | Path, since: datetime | None = None) -> list[Path]:
    """The rotated files of `path`, oldest first, then `path` itself; with `since`, only
    files written to at or after it (a record is written after its own `ts`)."""
    path = Path(path)
    pattern = _rotated_pattern(path)
    rotated: list[tuple[str, int, Path]] = []
    if path.parent.is_dir():
        for entry in path.parent.iterdir():
            match = pattern.match(entry.name)
            if match:
                rotated.append((match.group(1), int(match.group(2) or 0), entry))
    files = [entry for _, _, entry in sorted(rotated)]
    if path.exists():
        files.append(path)
    if since is None:
        return files
    cutoff = since.timestamp()
    return [f for f in files if f.stat().st_mtime >= cutoff]


def read_records(
    path: str | Path, since: datetime | None = None, stats: ReadStats | None = None
) -> Iterator[UsageRecord]:
    """The records of one file with `ts` at or after `since`; malformed or partial lines are
    skipped and counted in `stats`. Blocking: run it in a thread from async code."""
    stats = stats if stats is not None else ReadStats()
    stats.files += 1
    with open(path, "rb") as file:
        for line in file:
            if not line.strip():
                continue
            try:
                rec = UsageRecord.from_json(line)
            except ValueError:
                stats.malformed += 1
                continue
            if since is not None and parse_ts(rec.ts) < since:
                stats.skipped += 1
                continue
            stats.records += 1
            yield rec


def read_usage(
    path: str | Path, since: datetime | None = None, stats: ReadStats | None = None
) -> Iterator[UsageRecord]:
    """`read_records` over the current file and its rotated ones that may hold records at or
    after `since`, oldest first."""
    stats = stats if stats is not None else ReadStats()
    for file in usage_files(path, since):
        try:
            yield from read_records(file, since, stats)
        except FileNotFoundError:  # rotated away or deleted meanwhile
            continue
