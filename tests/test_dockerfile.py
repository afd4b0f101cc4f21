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
