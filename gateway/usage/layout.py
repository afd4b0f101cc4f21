"""The Redis layout of usage data, shared by the Redis sink (writer) and store (reader).

- `gateway:usage`: a stream, one entry per record, field `record` = the record's JSON; trimmed
  approximately (`MAXLEN ~`) to `usage.sinks.redis_stream_maxlen`.
- `gateway:usage:agg:<YYYY-MM-DD>`: a hash per UTC day (of the records' `ts`) of counters per
  (feature, model, tier, key) with the user slot left empty. Read for any grouping without
  `user`: it stays small however many end users there are.
- `gateway:usage:agg_user:<YYYY-MM-DD>`: the same with the user slot filled; read only when
  grouping by `user`.

A hash field is `<feature>␟<model>␟<tier>␟<key>␟<user>␟<metric>`, ␟ being \\x1f (inside values
it, \\x1d and \\x1e become spaces; an absent value is the empty string). The metric is one of
`requests`, `errors` (status >= 400), `prompt_tokens`, `completion_tokens`, `cached_tokens`,
`cache_write_tokens`, `reasoning_tokens`, `cache_hits` (answered by the response cache),
`cost_usd`, `saved_usd` (what those hits would have cost), `latency_ms_sum`, `ttft_ms_sum`,
`ttft_count`, or a histogram bucket count `lat_b<i>` / `ttft_b<i>` (buckets in
`aggregate`). Counters that would be zero are never written. Day hashes expire `ttl_days`
(400) after their last write.
"""

from __future__ import annotations

from gateway.usage.aggregate import DimTuple

STREAM_KEY = "gateway:usage"  # also the prefix of the aggregate hashes
STREAM_FIELD = "record"
SEP = "\x1f"
DEFAULT_TTL_DAYS = 400


def agg_key(day: str, with_user: bool, base: str = STREAM_KEY) -> str:
    """The aggregate hash of one UTC day."""
    return f"{base}:{'agg_user' if with_user else 'agg'}:{day}"


# Separators inside script arguments (see redis_sink); never part of a value.
PAIR_SEP = "\x1d"
ENTRY_SEP = "\x1e"
_CLEAN = str.maketrans({SEP: " ", PAIR_SEP: " ", ENTRY_SEP: " "})


def field_prefix(dims: DimTuple) -> str:
    """The dimensions part of a field, ending in the separator: append the metric."""
    return "".join(("" if v is None else v.translate(_CLEAN)) + SEP for v in dims)


def parse_field(field: str) -> tuple[DimTuple, str] | None:
    parts = field.split(SEP)
    if len(parts) != 6:
        return None
    f, m, t, k, u, metric = (p or None for p in parts)
    if metric is None:
        return None
    return (f, m, t, k, u), metric
