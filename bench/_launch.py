"""Starting the benchmark's servers as child processes, waiting until they serve, and making
sure every one of them is gone when the benchmark ends, however it ends."""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from subprocess import Popen
from types import TracebackType
from typing import IO

from _common import HOST

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: on Linux, the kernel sends it SIGTERM if the benchmark
    itself is killed (even with SIGKILL), so no server outlives a crashed run."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    argv: list[str],
    stdout: IO[bytes] | int,
    stderr: IO[bytes] | int,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Popen[bytes]:
    """Start a child of the benchmark, in `cwd` (default: the project) with `env` (default:
    the benchmark's own). A session of its own keeps the terminal's Ctrl-C away from it: the
    benchmark receives Ctrl-C alone and stops its children in order."""
    return subprocess.Popen(
        argv,
        cwd=cwd or PROJECT_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )


def run_to_end(
    argv: list[str],
    timeout_s: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int, bytes, bytes]:
    """Run a short-lived child (the load generator, check-config) and return its exit code,
    stdout and stderr. It is killed if the benchmark is interrupted meanwhile."""
    proc = spawn(argv, subprocess.PIPE, subprocess.PIPE, cwd, env)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc.returncode, out, err


class BenchFailed(RuntimeError):
    """The benchmark cannot go on: a server exited or never became ready, the gateway refused
    the config, or the load generator failed. The message says which, with its stderr."""


class Children:
    """The running servers. As a context manager, stops all of them on exit."""

    def __init__(self) -> None:
        self._procs: list[tuple[str, Popen[bytes], Path | None]] = []

    def start(
        self,
        name: str,
        argv: list[str],
        log: Path | None = None,
        stdout: Path | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Popen[bytes]:
        """Start one server; its stderr goes to `log` (kept for error messages) or nowhere,
        its stdout to the file `stdout` (which may be `log` too) or nowhere. `cwd` and `env`
        as for `spawn`."""
        stderr: IO[bytes] | int = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
        out: IO[bytes] | int = subprocess.DEVNULL
        if stdout is not None:
            out = stderr if stdout == log else open(stdout, "wb")  # noqa: SIM115
        try:
            proc = spawn(argv, out, stderr, cwd, env)
        finally:
            for stream in (stderr, out):
                if not isinstance(stream, int):
                    stream.close()  # the child holds its own copy of the descriptor
        self._procs.append((name, proc, log))
        return proc

    def stop(self, proc: Popen[bytes]) -> None:
        """Stop one child before the others (SIGTERM, then SIGKILL after 5 s)."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._procs = [entry for entry in self._procs if entry[1] is not proc]

    def wait_ready(
        self,
        proc: Popen[bytes],
        port: int,
        health_path: str | None = None,
        timeout_s: float = 20.0,
    ) -> None:
        """Poll until the server answers: GET `health_path` with 200 when given, else a TCP
        connect. Fails fast, with the server's log, if it exits first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise self._exited(proc)
            if _answers(port, health_path):
                return
            time.sleep(0.05)
        raise BenchFailed(
            f"{self._name(proc)} not ready after {timeout_s:g}s" + self._log_tail(proc)
        )

    def check_alive(self) -> None:
        """Fail, with the server's log, if any server has exited."""
        for _, proc, _ in self._procs:
            if proc.poll() is not None:
                raise self._exited(proc)

    def stop_all(self) -> None:
        """SIGTERM everyone, give them a moment to close cleanly, then SIGKILL stragglers."""
        for _, proc, _ in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for _, proc, _ in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()

    def _exited(self, proc: Popen[bytes]) -> BenchFailed:
        return BenchFailed(
            f"{self._name(proc)} exited with {proc.returncode}" + self._log_tail(proc)
        )

    def _name(self, proc: Popen[bytes]) -> str:
        return next((name for name, p, _ in self._procs if p is proc), "server")

    def _log_tail(self, proc: Popen[bytes]) -> str:
        log = next((log for _, p, log in self._procs if p is proc), None)
        if log is None or not log.exists():
            return ""
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        return ("; its stderr ends with:\n  " + "\n  ".join(tail)) if tail else ""


def _answers(port: int, health_path: str | None) -> bool:
    """One readiness probe. http.client, not urllib: it ignores *_proxy variables, so the probe
    really goes to 127.0.0.1."""
    if health_path is None:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            return False
    conn = http.client.HTTPConnection(HOST, port, timeout=1.0)
    try:
        conn.request("GET", health_path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def ensure_command(command: str, package: str) -> str:
    """The path of `command`; installed from Debian's `package` when missing and this is
    root, else the benchmark stops and says what to install."""
    found = shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {package} (apt-get install {package})...", file=sys.stderr, flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
            subprocess.run(argv, env=env, check=False, capture_output=True, timeout=600)
        found = shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")
        if found:
            return found
    raise BenchFailed(
        f"this benchmark needs {command}: install it (Debian: apt-get install {package})"
    )
