"""Steady mixed traffic for the compose stack, so the dashboard has something to show.

Run with `docker compose -f deploy/compose.yaml --profile load up`. Standard library only: it
runs in the gateway's own image. Spreads requests over both replicas with several features,
tiers and keys: streams, embeddings, the always-failing `flaky` tier (fallbacks), the `free`
key's 10 rpm (rate limits) and a few upstream failures (`mock:status=503`).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

GATEWAYS = os.environ.get("GATEWAYS", "http://gateway-1:8080,http://gateway-2:8080").split(",")
RATE = float(os.environ.get("RATE", "5"))  # requests per second, all workers together
WORKERS = int(os.environ.get("WORKERS", "8"))
DEMO_KEY = os.environ.get("DEMO_KEY", "sk-local-demo")
FREE_KEY = os.environ.get("FREE_KEY", "sk-local-free")

# (weight, key, feature, path, body)
SCENARIOS = [
    (40, DEMO_KEY, "chat-api", "/v1/chat/completions",
     {"model": "fast", "messages": [{"role": "user", "content": "hello"}]}),
    (25, DEMO_KEY, "streaming-chat", "/v1/chat/completions",
     {"model": "standard", "stream": True, "messages": [{"role": "user", "content": "tell me"}]}),
    (10, DEMO_KEY, "semantic-search", "/v1/embeddings",
     {"model": "embed", "input": ["a document to embed"]}),
    (10, FREE_KEY, "support-triage", "/v1/chat/completions",
     {"model": "flaky", "messages": [{"role": "user", "content": "triage this ticket"}]}),
    (5, DEMO_KEY, "chat-api", "/v1/chat/completions",
     {"model": "premium", "messages": [{"role": "user", "content": "fail mock:status=503"}]}),
    (10, DEMO_KEY, "experiments", "/v1/chat/completions",  # not in usage.features: "other"
     {"model": "premium", "stream": True, "messages": [{"role": "user", "content": "think"}]}),
]

counts: Counter[str] = Counter()
lock = threading.Lock()


def one_request() -> str:
    weights = [s[0] for s in SCENARIOS]
    _, key, feature, path, body = random.choices(SCENARIOS, weights)[0]
    request = urllib.request.Request(
        random.choice(GATEWAYS) + path,
        data=json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "X-Gateway-Feature": feature,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return str(response.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except (urllib.error.URLError, OSError) as exc:
        return type(exc).__name__


def worker() -> None:
    interval = WORKERS / RATE
    while True:
        started = time.monotonic()
        outcome = one_request()
        with lock:
            counts[outcome] += 1
        time.sleep(max(0.0, interval - (time.monotonic() - started)) * random.uniform(0.5, 1.5))


def main() -> None:
    for _ in range(WORKERS):
        threading.Thread(target=worker, daemon=True).start()
    while True:
        time.sleep(10)
        with lock:
            print("requests by outcome:", dict(sorted(counts.items())), flush=True)


if __name__ == "__main__":
    main()
