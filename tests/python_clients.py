"""Real Python framework clients for tests: LangChain (`langchain-openai`, `langchain-anthropic`),
LlamaIndex (`llama-index-llms-openai`, `-openai-like`), litellm and pydantic-ai, pinned in
tests/pyclients/requirements.txt.

They pin versions of `openai` (and of much else) that conflict with the project's own test venv,
so they live in a venv of their own. `client_venv()` creates it once per requirements file, in a
cache outside the repository:
`${XDG_CACHE_HOME:-~/.cache}/llm-gateway/pyclients-<sha256(requirements.txt)[:16]>`.
It is built in place (`python -m venv`, then `pip install -r`) under a file lock, and a marker
file is written last, so a half-built venv (an install killed midway) is never used: the next
run removes it and builds it afresh, and two test processes that race wait for one build.

`run_python(script, env)` runs a script given as a string with that venv's Python and returns
the JSON object it prints as its last line of stdout. It runs as an asyncio subprocess, so a
gateway started in-process in the same event loop keeps serving while the script calls it.

The child sees only loopback: every HTTP proxy variable points at a closed port on 127.0.0.1
(with 127.0.0.1 and localhost exempt), and the frameworks' own downloads and telemetry are
switched off (litellm's model price map, Hugging Face, LangSmith), so a client that reaches for
the internet fails at once instead of leaving this machine.
"""

from __future__ import annotations

import asyncio
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

from tests.node_clients import run_script

REQUIREMENTS_DIR = Path(__file__).resolve().parent / "pyclients"
REQUIREMENTS = REQUIREMENTS_DIR / "requirements.txt"
INSTALL_TIMEOUT_S = 900.0
MARKER = "llm-gateway-pyclients.json"

# Inherited variables that would change what a client does without the test saying so: SDKs
# read keys and base URLs from these, frameworks their tracing and callbacks, and Python its
# paths and options from PYTHON*; VIRTUAL_ENV would name the project's venv, not the child's.
_DROPPED_ENV_PREFIXES = (
    "OPENAI_",
    "ANTHROPIC_",
    "AZURE_",
    "LITELLM_",
    "LANGCHAIN_",
    "LANGSMITH_",
    "LLAMA_",
    "LOGFIRE_",
    "PYDANTIC_AI_",
    "HF_",
    "PYTHON",
    "VIRTUAL_ENV",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)

# A proxy nobody listens on: httpx, requests and urllib send everything not on loopback there.
_DEAD_PROXY = "http://127.0.0.1:9"
_LOOPBACK = "127.0.0.1,localhost,::1"
_OFFLINE_ENV = {
    "HTTP_PROXY": _DEAD_PROXY,
    "HTTPS_PROXY": _DEAD_PROXY,
    "ALL_PROXY": _DEAD_PROXY,
    "http_proxy": _DEAD_PROXY,
    "https_proxy": _DEAD_PROXY,
    "all_proxy": _DEAD_PROXY,
    "NO_PROXY": _LOOPBACK,
    "no_proxy": _LOOPBACK,
    # litellm fetches its model price map from GitHub at import unless told to use its copy.
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "LANGCHAIN_TRACING_V2": "false",
    "LANGSMITH_TRACING": "false",
    "DO_NOT_TRACK": "1",
    "NO_COLOR": "1",
}

_lock = threading.Lock()
_built: Path | None = None


def cache_root() -> Path:
    """Where venvs are kept: outside the repository, shared by every checkout."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llm-gateway"


def requirements_hash() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _complete(venv: Path) -> bool:
    """Whether `venv` is a finished build for this requirements file and this Python."""
    try:
        marker = json.loads((venv / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("requirements_sha256") == requirements_hash()
        and marker.get("python") == _python_version()
        and venv_python(venv).exists()
    )


def _run_install_step(command: list[str], what: str) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env |= {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    try:
        done = subprocess.run(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{what} took over {INSTALL_TIMEOUT_S:.0f}s") from exc
    if done.returncode != 0:
        raise AssertionError(
            f"{what} failed with exit {done.returncode}: {' '.join(command)}\n"
            f"stdout:\n{done.stdout[-20000:]}\nstderr:\n{done.stderr[-20000:]}"
        )


def _build(venv: Path) -> None:
    """Create `venv` and install the pinned clients into it; the marker is written last."""
    started = time.monotonic()
    _run_install_step([sys.executable, "-m", "venv", str(venv)], "creating the client venv")
    python = str(venv_python(venv))
    _run_install_step(
        [python, "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
        f"`pip install -r {REQUIREMENTS}`",
    )
    marker = {"requirements_sha256": requirements_hash(), "python": _python_version()}
    (venv / MARKER).write_text(json.dumps(marker), encoding="utf-8")
    print(
        f"python_clients: first install of {REQUIREMENTS.name} took "
        f"{time.monotonic() - started:.1f}s -> {venv}",
        file=sys.stderr,
        flush=True,
    )


def client_venv() -> Path:
    """The cached venv of tests/pyclients/requirements.txt, built on first use."""
    global _built
    with _lock:
        if _built is not None and _complete(_built):
            return _built
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True)
        venv = root / f"pyclients-{requirements_hash()}"
        with open(root / f"{venv.name}.lock", "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                if not _complete(venv):
                    if venv.exists():
                        shutil.rmtree(venv)  # a broken or foreign leftover: build afresh
                    try:
                        _build(venv)
                    except BaseException:
                        shutil.rmtree(venv, ignore_errors=True)
                        raise
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
        _built = venv
        return venv


def _child_env(env: dict[str, str]) -> dict[str, str]:
    inherited = {
        key: value for key, value in os.environ.items() if not key.startswith(_DROPPED_ENV_PREFIXES)
    }
    return {**inherited, **_OFFLINE_ENV, **env}


async def run_python(script: str, env: dict[str, str], timeout_s: float = 60) -> dict[str, Any]:
    """Run `script` with the client venv's Python; return the JSON object of its last stdout line.

    `env` is added to this process's environment (less OPENAI_*, ANTHROPIC_*, the frameworks'
    own variables, PYTHON*, VIRTUAL_ENV and proxies, and with the loopback-only settings above),
    so a client sees only what the test gives it. A nonzero exit or a run longer than
    `timeout_s` raises AssertionError with the script's stderr.
    """
    venv = await asyncio.to_thread(client_venv)
    with tempfile.TemporaryDirectory(prefix="llm-gateway-py-") as folder:
        workdir = Path(folder)
        path = workdir / "script.py"
        path.write_text(script, encoding="utf-8")
        argv = [str(venv_python(venv)), "-I", str(path)]  # -I: isolated, no user site
        env = _child_env({"HOME": str(workdir), **env})
        return await run_script(argv, workdir, env, timeout_s, "python script")
