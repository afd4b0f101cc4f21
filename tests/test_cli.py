"""`gateway serve` as a newcomer runs it: the installed command, the demo config, a real client."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import openai

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def gateway_command() -> list[str]:
    """The installed `gateway` script next to this Python, as `pip install` puts it."""
    script = Path(sys.executable).parent / "gateway"
    assert script.exists() or shutil.which("gateway"), "pip install did not install `gateway`"
    return [str(script) if script.exists() else "gateway"]


async def wait_ready(url: str, deadline: float) -> bool:
    async with aiohttp.ClientSession() as http:
        while time.perf_counter() < deadline:
            try:
                async with http.get(url + "/healthz") as response:
                    if response.status == 200:
                        return True
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.02)
    return False


async def test_demo_starts_fast_and_serves_the_openai_client() -> None:
    port = free_port()
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *gateway_command(),
        "serve",
        "--config",
        "examples/demo.yaml",
        "--port",
        str(port),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        env={**os.environ, "GATEWAY_CONFIG": ""},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert await wait_ready(url, started + 10), "gateway did not start"
        startup = time.perf_counter() - started
        assert startup < 2.0, f"startup took {startup:.2f}s"
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="anything") as client:
            completion = await client.chat.completions.create(
                model="fast", messages=[{"role": "user", "content": "hello"}]
            )
            assert completion.choices[0].message.content
            stream = await client.chat.completions.create(
                model="standard",
                messages=[{"role": "user", "content": "hello"}],
                stream=True,
                max_tokens=5,
            )
            chunks = [c async for c in stream]
            assert chunks[-1].choices[0].finish_reason == "length"
            embedding = await client.embeddings.create(model="embed", input="hello")
            assert len(embedding.data[0].embedding) == 8
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 0
    lines = stderr.decode().splitlines()
    assert lines and all(line.startswith("{") for line in lines), stderr.decode()[:2000]


def test_serve_with_a_bad_config_exits_1_naming_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: {fast: [nothing]}\n")
    result = subprocess.run(
        [*gateway_command(), "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "tiers.fast[0]: unknown model 'nothing'" in result.stderr


def test_serving_freezes_startup_objects_and_collects_young_garbage_less_often() -> None:
    import gc

    from gateway.server.serving import GC_YOUNG_THRESHOLD, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0
        # Cycles made after startup are still collected.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
