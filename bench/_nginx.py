"""nginx as the benchmark's upstream: fixed answers from memory, so that it is never the
bottleneck (one nginx worker answers tens of thousands of requests a second on one core, ten
times what any Python target in front of it can forward).

Three routes, one per upstream shape the benchmark needs:
- `/v1/chat/completions`: a fixed `chat.completion` (the same bytes as `_servers.py upstream`);
- `/short/v1/chat/completions`: a stream of 6 events (role, 3 content deltas, finish with
  usage, `[DONE]`);
- `/long/v1/chat/completions`: a stream of 46 events (40 more content deltas).
The difference between the two streams' CPU per request is the cost of 40 relayed events.
"""

from __future__ import annotations

from pathlib import Path

from _common import HOST
from _launch import ensure_command
from _servers import CHAT_COMPLETION, STREAM_EVENTS, chunk

SHORT_EVENTS = STREAM_EVENTS
EXTRA_LONG_EVENTS = 40
LONG_EVENTS = (
    STREAM_EVENTS[:-2]
    + tuple(chunk({"content": f" word{n}"}) for n in range(EXTRA_LONG_EVENTS))
    + STREAM_EVENTS[-2:]
)

_CONFIG = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  types {{ application/json json; text/event-stream sse; }}
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_buffer_size 64k;
  client_body_temp_path {dir}/nginx-body;
  proxy_temp_path {dir}/nginx-proxy;
  fastcgi_temp_path {dir}/nginx-fastcgi;
  uwsgi_temp_path {dir}/nginx-uwsgi;
  scgi_temp_path {dir}/nginx-scgi;
  server {{
    listen {host}:{port} backlog=4096;
    # nginx's static files answer GET only: a POST gets 405, which error_page turns into
    # the file itself, so every POST is answered from the page cache without a body copy.
    root {dir}/www;
    error_page 405 =200 $uri;
    location = /v1/chat/completions {{ try_files /chat.json =404; }}
    location = /short/v1/chat/completions {{ try_files /short.sse =404; }}
    location = /long/v1/chat/completions {{ try_files /long.sse =404; }}
  }}
}}
"""


def write_config(directory: Path, port: int) -> Path:
    # Started as root, nginx's workers drop to an unprivileged user: they must be able to
    # reach the files (a temporary directory is private to its owner).
    directory.chmod(0o711)
    www = directory / "www"
    www.mkdir(mode=0o755, exist_ok=True)
    (www / "chat.json").write_bytes(CHAT_COMPLETION)
    (www / "short.sse").write_bytes(b"".join(SHORT_EVENTS))
    (www / "long.sse").write_bytes(b"".join(LONG_EVENTS))
    path = directory / "nginx.conf"
    path.write_text(_CONFIG.format(dir=directory, host=HOST, port=port))
    return path


def nginx_argv(directory: Path, port: int) -> list[str]:
    """The command that runs nginx in the foreground with its files in `directory`."""
    config = write_config(directory, port)
    return [ensure_command("nginx", "nginx"), "-c", str(config), "-p", str(directory)]
