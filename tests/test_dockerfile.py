"""The Dockerfile, checked without a Docker engine: what it copies exists, it runs as a
non-root user, its command is `gateway serve`, and its HEALTHCHECK asks /healthz."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

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
    final = steps[stages[-1] :]
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


@pytest.fixture
def fresh_install(tmp_path: Path) -> Path:
    """The project built as a wheel and installed into a fresh venv; its dependencies come
    from the test environment (no download), the project itself only from the wheel (a path
    in a .pth adds no editable-install finder)."""
    import subprocess
    import sys
    import sysconfig

    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(ROOT)],
        check=True,
        timeout=300,
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            str(next(dist.glob("*.whl"))),
        ],
        check=True,
        timeout=300,
    )
    where = subprocess.run(
        [str(python), "-c", "import gateway; print(gateway.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout
    assert where.startswith(str(venv)), where
    return venv


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """/etc/gateway/config.yaml as the image has it, under a temporary root."""
    import shutil

    etc = tmp_path / "etc" / "gateway"
    etc.mkdir(parents=True)
    shutil.copy(ROOT / "config.yaml", etc / "config.yaml")
    (tmp_path / "work").mkdir()
    return tmp_path


async def test_a_fresh_venv_install_serves_with_the_images_config_path(
    fresh_install: Path, image_root: Path
) -> None:
    """What the image does, without an engine: the installed `gateway serve` with no
    arguments, GATEWAY_CONFIG pointing at /etc/gateway/config.yaml, secrets from the
    environment."""
    import asyncio
    import os
    import signal
    import subprocess

    import aiohttp

    from tests.conftest import free_port

    port = free_port()
    env = {
        **os.environ,
        "GATEWAY_CONFIG": str(image_root / "etc" / "gateway" / "config.yaml"),
        "OPENAI_API_KEY": "sk-test",
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "WEB_APP_KEY": "web-key",
        "TRIAGE_BOT_KEY": "triage-key",
        # No Redis here: the config's on_backend_error: allow keeps serving.
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    process = await asyncio.create_subprocess_exec(
        str(fresh_install / "bin" / "gateway"),
        "serve",
        "--port",
        str(port),
        cwd=image_root / "work",
        env=env,
        stderr=subprocess.DEVNULL,
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
            async with http.get(
                f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer web-key"}
            ) as response:
                assert response.status == 200
                ids = {m["id"] for m in (await response.json())["data"]}
                assert {"fast", "standard"} <= ids
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)
    assert process.returncode == 0
