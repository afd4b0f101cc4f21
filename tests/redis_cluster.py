"""A real Redis Cluster (three masters, no replicas) and a real Sentinel setup (a primary, one
replica, one or three sentinels), on free 127.0.0.1 ports, for the tests of `redis.mode`.

Built from the same `redis-server` binary the other tests use: `--cluster-enabled yes` for the
cluster's nodes, joined with `redis-cli --cluster create`; `redis-server <file> --sentinel`
for the sentinels (Debian's `redis-sentinel` package is only a link to that binary, so nothing
else is installed). Timings are short (a node is judged down after 0.5 s) so that a failover
takes a few seconds, not half a minute.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer, free_port


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is not installed: the Redis tests start their own servers. "
            "Install redis-server (apt-get install redis-server) or run scripts/test.sh.",
            pytrace=False,
        )
    return found


def _wait(predicate: object, within_s: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} within {within_s}s")


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too: the ephemeral
    ports the kernel hands out are often above 55535, where the bus port cannot exist."""
    for _ in range(200):
        port = random.randrange(20_000, 30_000)
        try:
            with socket.socket() as one, socket.socket() as bus:
                one.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10_000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterNodes:
    """Three cluster-enabled masters holding every slot between them."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.nodes: list[RedisServer] = []
        for i in range(masters):
            folder = directory / f"node-{i}"
            folder.mkdir(parents=True)
            self.nodes.append(
                RedisServer(
                    folder,
                    port=free_cluster_port(),
                    extra=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(folder / "nodes.conf"),
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            )

    @property
    def url(self) -> str:
        """A seed: the client learns the other nodes from it."""
        return self.nodes[0].url

    @property
    def seeds(self) -> list[str]:
        return [f"127.0.0.1:{node.port}" for node in self.nodes]

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [_binary("redis-cli"), "--cluster", "create", *self.seeds, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        _wait(self._ready, 15, "the cluster did not report cluster_state:ok on every node")

    def _ready(self) -> bool:
        return all(
            b"cluster_state:ok" in node.command_all("CLUSTER", "INFO") for node in self.nodes
        )

    def flush(self) -> None:
        for node in self.nodes:
            node.flush()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


class RedisSentinelSetup:
    """A primary, a replica of it, and `sentinels` sentinels watching it as `master_name`,
    with a majority quorum. Failover tests use one sentinel: three first have to find each
    other and then elect a leader, which doubles the failover time and changes nothing the
    client sees (it asks the sentinels in turn until one answers)."""

    master_name = "gateway"

    def __init__(self, directory: Path, sentinels: int = 3) -> None:
        (directory / "primary").mkdir(parents=True)
        (directory / "replica").mkdir()
        # No delay before a replica's first sync (the default waits 5 s for more replicas).
        fast_sync = ["--repl-diskless-sync-delay", "0"]
        self.primary = RedisServer(directory / "primary", extra=fast_sync)
        self.replica = RedisServer(
            directory / "replica",
            extra=[*fast_sync, "--replicaof", "127.0.0.1", str(self.primary.port)],
        )
        self.directory = directory
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self._sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def nodes(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.sentinel_ports]

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        _wait(
            lambda: b"master_link_status:up" in self.replica.command_all("INFO", "replication"),
            10,
            "the replica did not sync with the primary",
        )
        quorum = len(self.sentinel_ports) // 2 + 1
        for port in self.sentinel_ports:
            conf = self.directory / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"logfile {self.directory / f'sentinel-{port}.log'}\n"
                f"sentinel monitor {self.master_name} 127.0.0.1 {self.primary.port} {quorum}\n"
                f"sentinel down-after-milliseconds {self.master_name} 500\n"
                f"sentinel failover-timeout {self.master_name} 3000\n"
                f"sentinel parallel-syncs {self.master_name} 1\n"
            )
            self._sentinels.append(
                subprocess.Popen(
                    [_binary("redis-server"), str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        _wait(
            lambda: all(self._master_port_at(port) for port in self.sentinel_ports),
            10,
            "the sentinels did not start",
        )

    def master_port(self) -> int | None:
        """The primary's port as the first sentinel that answers reports it."""
        for port in self.sentinel_ports:
            found = self._master_port_at(port)
            if found is not None:
                return found
        return None

    def _master_port_at(self, port: int) -> int | None:
        reply = RedisServer.at(port).command_all(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
        )
        lines = reply.split(b"\r\n")
        return int(lines[4]) if len(lines) >= 5 and lines[0] == b"*2" else None

    def stop(self) -> None:
        for process in self._sentinels:
            if process.poll() is None:
                process.kill()
                process.wait()
        self.replica.kill()
        self.primary.kill()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """One cluster for a whole test module (making one takes about two seconds)."""
    cluster = RedisClusterNodes(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _sentinel_setup(folder: Path, sentinels: int) -> Iterator[RedisSentinelSetup]:
    setup = RedisSentinelSetup(folder, sentinels=sentinels)
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()


@pytest.fixture
def redis_sentinels(tmp_path: Path) -> Iterator[RedisSentinelSetup]:
    """A primary, a replica and three sentinels for one test."""
    yield from _sentinel_setup(tmp_path / "sentinel", sentinels=3)


@pytest.fixture
def redis_failover(tmp_path: Path) -> Iterator[RedisSentinelSetup]:
    """A primary, a replica and one sentinel, for a test that kills the primary."""
    yield from _sentinel_setup(tmp_path / "sentinel", sentinels=1)
