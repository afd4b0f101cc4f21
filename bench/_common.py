"""Small helpers shared by the benchmark's processes: ports, /proc readings, percentiles, a
minimal Redis client for INFO, and running a coroutine on uvloop."""

from __future__ import annotations

import asyncio
import math
import os
import socket
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

HOST = "127.0.0.1"  # the benchmark never listens on or connects to anything else

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A port nobody listens on right now. The tiny race between closing this socket and the
    server binding the port is acceptable on a benchmark box."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def proc_status_kb(pid: int, field: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM), or None when unreadable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far, or None when unreadable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    fields = text[text.rfind(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLOCK_TICKS


def machine_busy_seconds() -> float | None:
    """CPU time all cores together have spent busy since boot (user, system, interrupts and
    time stolen by the hypervisor), or None when unreadable. Minus what the benchmark's own
    processes used, it says how much other work disturbed a measurement."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...
    user, nice, system, irq, softirq, steal = (int(fields[i]) for i in (1, 2, 3, 6, 7, 8))
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..1)."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]


def redis_call(port: int, *args: str, timeout_s: float = 2.0) -> str:
    """One command to the benchmark's own Redis on 127.0.0.1 and its reply (simple or bulk
    string). Blocking and tiny on purpose: it is only used between measurements, for PING and
    INFO, so the benchmark needs no Redis client of its own."""
    command = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
        sock.sendall(command.encode())
        reader = sock.makefile("rb")
        line = reader.readline().rstrip(b"\r\n")
        if line[:1] == b"$":
            length = int(line[1:])
            return "" if length < 0 else reader.read(length + 2)[:length].decode()
        if line[:1] == b"-" or not line:
            raise OSError(f"redis replied {line.decode(errors='replace')!r} to {args[0]}")
        return line[1:].decode()


def redis_commandstats(port: int) -> dict[str, dict[str, int]]:
    """INFO commandstats: {command: {"calls": n, "usec": n}}. Commands run inside a Lua script
    are counted too, under their own names, beside the EVALSHA that ran them."""
    stats: dict[str, dict[str, int]] = {}
    for line in redis_call(port, "INFO", "commandstats").splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, _, fields = line[len("cmdstat_") :].partition(":")
        values = dict(field.split("=", 1) for field in fields.split(","))
        stats[name] = {"calls": int(values["calls"]), "usec": int(values["usec"])}
    return stats


def commandstats_delta(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    """What ran between two snapshots, without the INFO calls that took them."""
    delta: dict[str, dict[str, int]] = {}
    for name, now in after.items():
        then = before.get(name, {"calls": 0, "usec": 0})
        calls = now["calls"] - then["calls"]
        if calls > 0 and name != "info":
            delta[name] = {"calls": calls, "usec": now["usec"] - then["usec"]}
    return delta


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop like the gateway does, so every process has the same kind of loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a gateway dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)
