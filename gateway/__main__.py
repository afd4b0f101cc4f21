"""Command line: `gateway serve` and `gateway check-config` (also `python -m gateway`)."""

from __future__ import annotations

import argparse
import asyncio
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


def _serve(args: argparse.Namespace) -> int:
    from gateway.logs import setup_logging
    from gateway.server.serving import GatewayServer, serve_until_signalled

    path = args.config or default_config_path()
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return 1
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
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
