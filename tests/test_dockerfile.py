"""The Dockerfile, checked without a Docker engine: what it copies exists, it runs as a
non-root user, its command is `gateway serve`, and its HEALTHCHECK asks /healthz."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # join continued lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_final_stage_is_slim_and_runs_as_non_root() -> None:
    steps = instructions()
    stages = [i for i, (k, _) in enumerate(steps) if k == "FROM"]
    final = steps[stages[-1]:]
    assert "slim" in final[0][1]
    users = [rest for k, rest in final if k == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_command_is_gateway_serve_and_healthcheck_asks_healthz() -> None:
    steps = dict(instructions())
    assert json.loads(steps["ENTRYPOINT"]) == ["gateway"]
    assert json.loads(steps["CMD"]) == ["serve"]
    assert "/healthz" in steps["HEALTHCHECK"]


def test_everything_copied_from_the_context_exists() -> None:
    for keyword, rest in instructions():
        if keyword != "COPY" or rest.startswith("--from"):
            continue
        *sources, _dest = rest.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_the_configs_the_image_ships_are_the_repos_valid_ones() -> None:
    from gateway.config import load_config

    load_config(ROOT / "examples" / "demo.yaml", env={})
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY examples/demo.yaml /etc/gateway/demo.yaml" in dockerfile
    assert "COPY config.yaml /etc/gateway/config.yaml" in dockerfile
    assert "GATEWAY_CONFIG=/etc/gateway/config.yaml" in dockerfile


async def test_the_installed_command_serves_with_the_images_config_path(tmp_path: Path) -> None:
    """What the image runs: `gateway serve` with no arguments, GATEWAY_CONFIG pointing at
    /etc/gateway/config.yaml (here under a temporary root), secrets from the environment."""
    import asyncio
    import os
    import shutil
    import signal
    import subprocess
    import sys

    import aiohttp

    from tests.conftest import free_port

    etc = tmp_path / "etc" / "gateway"
    etc.mkdir(parents=True)
    shutil.copy(ROOT / "config.yaml", etc / "config.yaml")
    workdir = tmp_path / "work"
    workdir.mkdir()
    port = free_port()
    script = Path(sys.executable).parent / "gateway"
    env = {
        **os.environ,
        "GATEWAY_CONFIG": str(etc / "config.yaml"),
        "OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant-test",
        "WEB_APP_KEY": "web-key", "TRIAGE_BOT_KEY": "triage-key",
        # No Redis here: the config's on_backend_error: allow keeps serving.
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    process = await asyncio.create_subprocess_exec(
        str(script), "serve", "--port", str(port), cwd=workdir, env=env,
        stderr=subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the gateway did not start")
            async with http.get(f"http://127.0.0.1:{port}/v1/models",
                                headers={"Authorization": "Bearer web-key"}) as response:
                assert response.status == 200
                ids = {m["id"] for m in (await response.json())["data"]}
                assert {"fast", "standard"} <= ids
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 0
