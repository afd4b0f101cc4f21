"""GET /metrics: the Prometheus text format."""

from __future__ import annotations

from aiohttp import web

from gateway import metrics as collectors
from gateway.http.request import PROCESS
from gateway.store.cache import MemoryCache


async def metrics(request: web.Request) -> web.StreamResponse:
    holder = request.app[PROCESS]
    # Cooldowns end by the clock, not by an event: availability is read fresh at each scrape.
    try:
        cooling = await holder.cooldowns.cooling()
    except Exception:
        cooling = set()
    for model in holder.current.config.models:
        collectors.MODEL_AVAILABLE.labels(model).set(0 if model in cooling else 1)
    # The memory cache's size is its own running count: read at each scrape, like the
    # cooldowns, so that storing an answer updates nothing else.
    cache = holder.cache.backend if holder.cache is not None else None
    if isinstance(cache, MemoryCache):
        collectors.CACHE_MEMORY_BYTES.labels().set(cache.size_bytes)
        collectors.CACHE_MEMORY_ENTRIES.labels().set(len(cache))
    body, content_type = collectors.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response
