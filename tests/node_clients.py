"""Real Node.js clients for tests: the Vercel AI SDK (`ai`, `@ai-sdk/openai`,
`@ai-sdk/anthropic`), the `openai` npm package and `zod`, pinned in tests/node/.

`node_modules()` installs the packages pinned by tests/node/package-lock.json once per lock file,
into a cache outside the repository:
`${XDG_CACHE_HOME:-~/.cache}/llm-gateway/node-<sha256(package-lock.json)[:16]>/node_modules`.
The install runs `npm ci` in a temporary folder beside it, under a file lock, and is renamed into
place whole, so two test processes that race both end up with one complete install.

`run_node(script, env)` runs an ES module given as a string with `node` and returns the JSON
object it prints as its last line of stdout. ESM ignores NODE_PATH, so the script is written to a
temporary folder that has a `node_modules` symlink to the cached install, where `import ... from
"ai"` finds it. It runs as an asyncio subprocess, so a gateway started in-process in the same
event loop keeps serving while the script calls it.

Missing `node` or `npm` fails the test with a message; nothing is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent / "node"
PACKAGE_JSON = PACKAGE_DIR / "package.json"
PACKAGE_LOCK = PACKAGE_DIR / "package-lock.json"
MIN_NODE_MAJOR = 20
INSTALL_TIMEOUT_S = 600.0

# Inherited variables that would change what a client does without the test saying so: SDKs
# read keys and base URLs from these, and Node reads its options from NODE_*.
_DROPPED_ENV_PREFIXES = ("OPENAI_", "ANTHROPIC_", "AI_GATEWAY_", "VERCEL_", "NODE_")

_lock = threading.Lock()
_installed: Path | None = None


def cache_root() -> Path:
    """Where installs are kept: outside the repository, shared by every checkout."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llm-gateway"


def lock_hash() -> str:
    return hashlib.sha256(PACKAGE_LOCK.read_bytes()).hexdigest()[:16]


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not on PATH: the Node.js client tests need Node.js "
            f">= {MIN_NODE_MAJOR} with npm (e.g. `apt-get install nodejs npm`)",
            pytrace=False,
        )
    return path


def _check_node_version(node: str) -> None:
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError:
        pytest.fail(f"cannot read the version of {node}: {version!r}", pytrace=False)
    if major < MIN_NODE_MAJOR:
        pytest.fail(
            f"{node} is Node.js {version}; the pinned clients in {PACKAGE_DIR} need "
            f">= {MIN_NODE_MAJOR}",
            pytrace=False,
        )


def _npm_ci(npm: str, into: Path) -> None:
    shutil.copy2(PACKAGE_JSON, into / "package.json")
    shutil.copy2(PACKAGE_LOCK, into / "package-lock.json")
    env = {**os.environ, "npm_config_update_notifier": "false"}
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=into,
            env=env,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"`npm ci` in {into} took over {INSTALL_TIMEOUT_S:.0f}s") from exc
    if done.returncode != 0:
        raise AssertionError(
            f"`npm ci` for {PACKAGE_LOCK} failed with exit {done.returncode}\n"
            f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )
    if not (into / "node_modules").is_dir():
        raise AssertionError(f"`npm ci` in {into} left no node_modules\n{done.stdout}")


def _install(root: Path, final: Path) -> None:
    """Install into a temporary sibling of `final`, then rename it into place."""
    npm = _require_tool("npm")
    staging = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=root))
    try:
        started = time.monotonic()
        _npm_ci(npm, staging)
        staging.chmod(0o755)  # mkdtemp makes it 0700
        try:
            staging.rename(final)
        except OSError:
            # Someone else (without the lock) finished first: theirs is as good as ours.
            if not (final / "node_modules").is_dir():
                raise
        else:
            print(
                f"node_clients: first install of {PACKAGE_LOCK.name} took "
                f"{time.monotonic() - started:.1f}s -> {final}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def node_modules() -> Path:
    """The cached install of tests/node/package-lock.json, installed on first use."""
    global _installed
    with _lock:
        if _installed is not None and _installed.is_dir():
            return _installed
        _check_node_version(_require_tool("node"))
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"node-{lock_hash()}"
        with open(root / f"{final.name}.lock", "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                if final.exists() and not (final / "node_modules").is_dir():
                    shutil.rmtree(final)  # a broken leftover: install afresh
                if not final.exists():
                    _install(root, final)
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
        _installed = final / "node_modules"
        return _installed


def _child_env(env: dict[str, str]) -> dict[str, str]:
    inherited = {
        key: value for key, value in os.environ.items() if not key.startswith(_DROPPED_ENV_PREFIXES)
    }
    return {**inherited, "NO_COLOR": "1", **env}


async def _drain(stream: asyncio.StreamReader | None, into: bytearray) -> None:
    if stream is None:
        return
    while chunk := await stream.read(65536):
        into.extend(chunk)


def last_json_object(stdout: str, stderr: str, what: str = "node script") -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise AssertionError(f"{what} printed nothing on stdout\nstderr:\n{stderr}")
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"{what}'s last stdout line is not JSON: {lines[-1]!r}\n"
            f"stdout:\n{stdout}\nstderr:\n{stderr}"
        ) from exc
    if not isinstance(result, dict):
        raise AssertionError(f"{what}'s last stdout line is not a JSON object: {result!r}")
    return result


async def run_node(script: str, env: dict[str, str], timeout_s: float = 60) -> dict[str, Any]:
    """Run `script` (an ES module) with node; return the JSON object of its last stdout line.

    `env` is added to this process's environment (less OPENAI_*, ANTHROPIC_*, AI_GATEWAY_*,
    VERCEL_* and NODE_* variables, so a client sees only what the test gives it). A nonzero
    exit or a run longer than `timeout_s` raises AssertionError with the script's stderr.
    """
    modules = await asyncio.to_thread(node_modules)
    node = _require_tool("node")
    with tempfile.TemporaryDirectory(prefix="llm-gateway-node-") as folder:
        workdir = Path(folder)
        (workdir / "node_modules").symlink_to(modules, target_is_directory=True)
        path = workdir / "script.mjs"
        path.write_text(script, encoding="utf-8")
        return await run_script(
            [node, str(path)], workdir, _child_env(env), timeout_s, "node script"
        )


async def run_script(
    argv: list[str], cwd: Path, env: dict[str, str], timeout_s: float, what: str
) -> dict[str, Any]:
    """Run a client script as a child process (an asyncio subprocess, so a gateway in this
    event loop keeps serving it) and return the JSON object of its last stdout line. A nonzero
    exit or a run past `timeout_s` raises AssertionError with its output; cancelled or timed
    out, the child is killed, never left behind."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = bytearray(), bytearray()
    readers = asyncio.gather(_drain(proc.stdout, out), _drain(proc.stderr, err))
    timed_out = False
    try:
        await asyncio.wait_for(proc.wait(), timeout_s)
    except TimeoutError:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    finally:
        if proc.returncode is None:  # cancelled: never leave the child behind
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        await readers
    stdout = out.decode("utf-8", errors="replace")
    stderr = err.decode("utf-8", errors="replace")
    if timed_out:
        raise AssertionError(
            f"{what} ran over {timeout_s}s and was killed\nstdout:\n{stdout}\nstderr:\n{stderr}"
        )
    if proc.returncode != 0:
        raise AssertionError(
            f"{what} exited with {proc.returncode}\nstderr:\n{stderr}\nstdout:\n{stdout}"
        )
    return last_json_object(stdout, stderr, what)
