"""What happens to a request between its API and its upstream, whatever API it came in: the
request context, authentication, routing, admission under limits, the attempt loop down a
fallback chain, the request's lease, and settling (metrics, usage record, give-backs).
Also what a request reads at its start (the runtime snapshot) and what the process keeps across
reloads. Never imports aiohttp.web: the HTTP side lives in `gateway.http` and `gateway.ingress`."""
