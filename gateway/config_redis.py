"""The `redis:` section: where the one Redis every replica shares is, and how it is run.

- `standalone`: `url` is the server.
- `cluster`: `url` is one node of a Redis Cluster (a seed: the client learns the others from
  it, and follows slot moves and failovers itself); `cluster.nodes` may list more seeds, so
  that the gateway starts while the first one is down. Cluster has one database: the URL
  names none, or 0.
- `sentinel`: `sentinel.nodes` are the sentinels and `sentinel.master` the name they monitor
  the primary under; the client asks them where the primary is, and again after a failover.
  `url` then gives what the primary is spoken to with (its scheme, password and database);
  its host and port are not used. `sentinel.password` is the sentinels' own, if they have one.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import field_validator, model_validator

from gateway.config_base import ConfigModel

_HOST_PORT = re.compile(r"^\[?[A-Za-z0-9_.:-]+\]?:\d{1,5}$")


def _check_nodes(nodes: list[str]) -> list[str]:
    for node in nodes:
        if not _HOST_PORT.match(node):
            raise ValueError(f"each node is host:port, got {node!r}")
    return nodes


def split_node(node: str) -> tuple[str, int]:
    """`host:port` (checked at load) as the pair redis-py takes."""
    host, _, port = node.rpartition(":")
    return host.strip("[]"), int(port)


class ClusterConfig(ConfigModel):
    nodes: list[str] = []  # more seeds besides `url`, host:port each

    _nodes = field_validator("nodes")(_check_nodes)


class SentinelConfig(ConfigModel):
    master: str  # the name the sentinels monitor the primary under (`sentinel monitor <name>`)
    nodes: list[str]  # the sentinels, host:port each; at least one must answer
    password: str | None = None  # the sentinels' own `requirepass`, when they have one

    _nodes = field_validator("nodes")(_check_nodes)

    @field_validator("nodes")
    @classmethod
    def _some(cls, nodes: list[str]) -> list[str]:
        if not nodes:
            raise ValueError("list at least one sentinel")
        return nodes


class RedisConfig(ConfigModel):
    """The Redis every replica shares: limits, cooldowns, usage, runtime keys, stored
    responses. One client per process serves them all."""

    url: str = "redis://127.0.0.1:6379/0"
    mode: Literal["standalone", "cluster", "sentinel"] = "standalone"
    cluster: ClusterConfig | None = None
    sentinel: SentinelConfig | None = None

    @field_validator("url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"must be a redis://, rediss:// or unix:// URL, got {url!r}")
        return url

    @model_validator(mode="after")
    def _mode_matches(self) -> RedisConfig:
        if self.mode == "sentinel" and self.sentinel is None:
            raise ValueError("mode: sentinel needs a `sentinel:` section (master, nodes)")
        if self.sentinel is not None and self.mode != "sentinel":
            raise ValueError("a `sentinel:` section needs mode: sentinel")
        if self.cluster is not None and self.mode != "cluster":
            raise ValueError("a `cluster:` section needs mode: cluster")
        if self.mode == "cluster":
            database = urlsplit(self.url).path.strip("/")
            if database not in ("", "0"):
                raise ValueError(f"Redis Cluster has only database 0; the url names {database}")
        return self
