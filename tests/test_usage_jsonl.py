"""The JSONL sink: whole lines even when the writer is SIGKILLed, rotation, reading back."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.config import SinksConfig, UsageConfig
from gateway.usage import (
    JsonlSink,
    UsageRecord,
    UsageRecorder,
    build_sinks,
    format_ts,
    read_records,
    read_usage,
    usage_files,
)
from gateway.usage.jsonl import ReadStats
from tests.test_usage_records import make_record

ROOT = Path(__file__).resolve().parent.parent

WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from gateway.usage import JsonlSink
    from tests.test_usage_records import make_record

    async def main() -> None:
        sink = JsonlSink(sys.argv[1], max_bytes=2_000_000)
        n = 0
        while True:
            batch = [
                make_record(
                    request_id=f"{sys.argv[2]}-{n + i}", error="x" * (n % 300), user=f"u{i}"
                )
                for i in range(500)
            ]
            await sink.write(batch)
            n += 500
            if n == 500:
                print("ready", flush=True)

    asyncio.run(main())
    """
)


def lines_of(path: Path) -> tuple[list[bytes], bytes]:
    """The newline-terminated lines of a file, and what follows the last newline."""
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    return data[:cut].splitlines(), data[cut:]


def test_a_writer_killed_mid_load_leaves_only_whole_lines(tmp_path: Path) -> None:
    """SIGKILL at a random moment, several times over the same file: every line written is a
    whole record. (Linux can cut a multi-page write() short when the process is killed inside
    it; such a partial tail is repaired away when the file is next opened, checked below.)"""
    path = tmp_path / "usage.jsonl"
    rng = random.Random(1)
    for round_ in range(4):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(round_)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert writer.stdout is not None and writer.stderr is not None
            assert writer.stdout.readline() == b"ready\n", writer.stderr.read()
            time.sleep(rng.uniform(0.05, 0.5))
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(10)
            for stream in (writer.stdout, writer.stderr):
                if stream is not None:
                    stream.close()

        files = usage_files(path)
        assert len(files) >= 1
        total = 0
        for file in files:
            lines, tail = lines_of(file)
            for line in lines:
                UsageRecord.from_json(line)  # raises on a partial or corrupt line
            total += len(lines)
            if file != path:
                assert tail == b""  # a rotated file is never cut
            elif tail:
                assert b"\n" not in tail and len(tail) < len(lines[0]) * 2
        assert total >= 500

    # The next writer repairs a cut tail before appending: then every line of every file parses.
    sink = JsonlSink(path)
    sink.write_sync(b"".join(r.to_json() + b"\n" for r in [make_record(request_id="last")]))
    sink.close_sync()
    stats = ReadStats()
    ids = [rec.request_id for rec in read_usage(path, stats=stats)]
    assert stats.malformed == 0 and ids[-1] == "last"
    assert len(ids) == len(set(ids))


def test_rotation_by_size_never_splits_a_batch(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    day = datetime(2025, 3, 10, 8, tzinfo=UTC)
    sink = JsonlSink(path, max_bytes=10_000, clock=lambda: day, fsync=False)
    batches = [[make_record(request_id=f"{b}-{i}") for i in range(7)] for b in range(20)]
    for batch in batches:
        sink.write_sync(b"".join(r.to_json() + b"\n" for r in batch))
    sink.close_sync()

    files = usage_files(path)
    assert files[0].name == "usage.2025-03-10.jsonl"
    assert files[1].name == "usage.2025-03-10.1.jsonl"
    assert files[-1] == path and sink.rotations == len(files) - 1 >= 3
    for file in files:
        data = file.read_bytes()
        assert data.endswith(b"\n") and len(data) <= 10_000
        assert data.count(b"\n") % 7 == 0  # whole batches
    ids = [rec.request_id for rec in read_usage(path)]
    assert ids == [rec.request_id for batch in batches for rec in batch]


async def test_rotation_by_day_through_the_recorder(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "usage.jsonl"
    now = [datetime(2025, 3, 9, 23, 59, 59, tzinfo=UTC)]
    sink = JsonlSink(path, clock=lambda: now[0])
    recorder = UsageRecorder([sink], queue_size=100, flush_interval_s=0.01)
    recorder.start()
    recorder.record(make_record(ts=format_ts(now[0]), request_id="late"))
    recorder.record(make_record(ts=format_ts(now[0]), request_id="later"))
    await recorder.aclose(5)
    os.utime(path, (now[0].timestamp(), now[0].timestamp()))  # as if written at that moment

    now[0] += timedelta(seconds=2)
    sink = JsonlSink(path, clock=lambda: now[0])
    sink.write_sync(make_record(ts=format_ts(now[0]), request_id="next-day").to_json() + b"\n")
    sink.close_sync()

    # The file was begun on the 9th (reopened the same day), rotated at the first write of the
    # 10th.
    assert [f.name for f in usage_files(path)] == ["usage.2025-03-09.jsonl", "usage.jsonl"]
    old = [r.request_id for r in read_records(path.parent / "usage.2025-03-09.jsonl")]
    assert old == ["late", "later"]
    assert [r.request_id for r in read_records(path)] == ["next-day"]
    # Reading from a moment on: rotated files last written before it are not even opened.
    since = datetime(2025, 3, 10, tzinfo=UTC)
    assert usage_files(path, since) == [path]
    assert [r.request_id for r in read_usage(path, since)] == ["next-day"]


def test_opening_repairs_a_partial_last_line_and_keeps_a_whole_one(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    whole = make_record(request_id="a").to_json()
    path.write_bytes(whole + b"\n" + make_record(request_id="b").to_json()[:40])
    sink = JsonlSink(path, fsync=False)
    sink.write_sync(make_record(request_id="c").to_json() + b"\n")
    sink.close_sync()
    assert sink.repaired_bytes == 40
    assert [r.request_id for r in read_records(path)] == ["a", "c"]

    path.write_bytes(whole)  # a whole record, only its newline missing
    sink = JsonlSink(path, fsync=False)
    sink.write_sync(make_record(request_id="d").to_json() + b"\n")
    sink.close_sync()
    assert sink.repaired_bytes == 0
    assert [r.request_id for r in read_records(path)] == ["a", "d"]


def test_read_records_skips_and_counts_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    old = make_record(request_id="old", ts="2025-03-01T00:00:00.000Z")
    new = make_record(request_id="new", ts="2025-03-05T00:00:00.000Z")
    path.write_bytes(
        old.to_json() + b"\n\n{garbage\n" + b'{"a": 1}\n' + new.to_json() + b"\n" + b'{"ts": "20'
    )
    stats = ReadStats()
    since = datetime(2025, 3, 2, tzinfo=UTC)
    assert [r.request_id for r in read_records(path, since, stats)] == ["new"]
    assert (stats.records, stats.malformed, stats.skipped) == (1, 3, 1)


def test_sinks_come_from_the_usage_config(tmp_path: Path) -> None:
    usage = UsageConfig(
        sinks=SinksConfig(jsonl=str(tmp_path / "u.jsonl"), jsonl_max_mb=1, redis=False)
    )
    (sink,) = build_sinks(usage)
    assert isinstance(sink, JsonlSink) and sink.max_bytes == 1024 * 1024 and sink.rotate_daily
    with pytest.raises(ValueError):
        build_sinks(UsageConfig(sinks=SinksConfig(redis=True)))  # no client given
    assert build_sinks(UsageConfig()) == []
