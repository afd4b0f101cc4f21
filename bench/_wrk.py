"""Driving a target with `wrk`, the C load generator (a Python one cannot saturate a bare relay,
so it flatters whatever is slower): installing it when missing, POSTing a JSON body from a Lua
script (the same body every time, or one of its own per request), and reading its summary as
JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from _launch import BenchFailed, ensure_command, run_to_end

# wrk's Lua hooks: every request the same POST; at the end, the summary as one JSON line
# (wrk's own text report is for people).
_SCRIPT = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{headers}
{request}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nWRK_JSON {{"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, '
    .. '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, '
    .. '"p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def ensure_wrk() -> str:
    """The path of `wrk`; installed from Debian's packages when missing and this is root."""
    return ensure_command("wrk", "wrk")


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# A body of its own for every request: the JSON around a marker, the marker replaced by this
# thread's number and a counter (each wrk thread runs its own Lua state; `setup` numbers them
# from the main one).
_UNIQUE_REQUEST = """\
threads, thread_no, counter = 0, 0, 0
local prefix, suffix = {prefix}, {suffix}
setup = function(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, prefix .. thread_no .. "-" .. counter .. suffix)
end
"""


def _header_lines(headers: dict[str, str] | None) -> str:
    return "\n".join(
        f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in (headers or {}).items()
    )


def write_script(path: Path, body: dict[str, Any], headers: dict[str, str] | None = None) -> Path:
    path.write_text(
        _SCRIPT.format(
            body=_lua_string(orjson.dumps(body).decode()),
            headers=_header_lines(headers),
            request="",
        )
    )
    return path


def write_unique_script(
    path: Path, body: dict[str, Any], marker: str, headers: dict[str, str] | None = None
) -> Path:
    """A script whose every request differs: `marker`, somewhere in one of the body's strings,
    is replaced by a number no other request of this script gets."""
    text = orjson.dumps(body).decode()
    prefix, found, suffix = text.partition(marker)
    if not found or marker in suffix:
        raise ValueError(f"the body must hold {marker!r} exactly once")
    request = _UNIQUE_REQUEST.format(prefix=_lua_string(prefix), suffix=_lua_string(suffix))
    path.write_text(
        _SCRIPT.format(
            body=_lua_string(text.replace(marker, "0")),
            headers=_header_lines(headers),
            request=request,
        )
    )
    return path


def run_wrk(
    url: str, script: Path, connections: int, duration_s: float, threads: int = 2
) -> dict[str, Any]:
    """One wrk run; its summary (requests, errors, p50/p99 in microseconds)."""
    argv = [
        ensure_wrk(),
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        url,
    ]
    code, out, err = run_to_end(argv, timeout_s=duration_s + 120)
    text = out.decode(errors="replace")
    if code != 0:
        raise BenchFailed(f"wrk failed with {code}:\n{text[-2000:]}{err.decode()[-2000:]}")
    for line in text.splitlines():
        if line.startswith("WRK_JSON "):
            summary: dict[str, Any] = orjson.loads(line.removeprefix("WRK_JSON "))
            summary["errors"] = sum(
                summary[k]
                for k in ("connect_errors", "read_errors", "write_errors", "status_errors")
            )
            return summary
    raise BenchFailed(f"wrk printed no summary:\n{text[-2000:]}")
