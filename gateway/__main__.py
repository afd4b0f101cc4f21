"""Command line: `gateway serve`, `gateway check-config` and `gateway keys` (also
`python -m gateway`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine
from typing import Any

from gateway.config import ConfigError, default_config_path, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="OpenAI-compatible LLM gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="config file (default: $GATEWAY_CONFIG, then config.yaml)")
    serve.add_argument("--host", help="listen address (default: server.host)")
    serve.add_argument("--port", type=int, help="listen port (default: server.port)")
    serve.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="(default: server.log_level)",
    )
    check = commands.add_parser("check-config", help="check a config file and list its problems")
    check.add_argument("--config", help="config file (default: $GATEWAY_CONFIG, then config.yaml)")
    keys = commands.add_parser("keys", help="manage a running gateway's runtime keys")
    keys.add_argument(
        "--url",
        default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080"),
        help="the gateway (default: $GATEWAY_URL, then http://127.0.0.1:8080)",
    )
    keys.add_argument(
        "--admin-key",
        default=os.environ.get("GATEWAY_ADMIN_KEY"),
        help="an admin key (default: $GATEWAY_ADMIN_KEY)",
    )
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key; its secret is printed once")
    create.add_argument("name")
    create.add_argument("--plan")
    create.add_argument("--feature")
    create.add_argument("--budget-usd", type=float)
    create.add_argument("--budget-period", choices=["day", "month", "total"], default="month")
    create.add_argument("--tiers", help="comma-separated tier names")
    create.add_argument("--expires-at", help="ISO 8601 datetime")
    create.add_argument("--admin", action="store_true")
    actions.add_parser("list", help="every key, with budgets and spend")
    revoke = actions.add_parser("revoke", help="delete a key: refused everywhere within 1 s")
    revoke.add_argument("name")
    return parser


def _check_config(path: str) -> int:
    try:
        load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        return 1
    print(f"{path}: ok")
    return 0


def _serve(args: argparse.Namespace, from_command_line: bool) -> int:
    from gateway.logs import setup_logging
    from gateway.pipeline.memory import allocator_environment
    from gateway.server.serving import GatewayServer, serve_until_signalled

    path = args.config or default_config_path()
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return 1
    environment = allocator_environment(config.server.trim_memory)
    if from_command_line and environment is not None:
        # The allocator is chosen when the interpreter starts, so the same command is run
        # again in place (same process id, for supervisors) with glibc's malloc.
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
    setup_logging(args.log_level or config.server.log_level)

    async def main() -> None:
        await serve_until_signalled(GatewayServer(config, args.host, args.port, config_path=path))

    try:
        _run_with_fastest_loop(main())
    except OSError as exc:
        print(f"cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_with_fastest_loop(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.config or default_config_path())
    if args.command == "keys":
        from gateway.ops.keys_cli import run_keys_command

        return run_keys_command(args)
    return _serve(args, from_command_line=argv is None)


if __name__ == "__main__":
    sys.exit(main())
