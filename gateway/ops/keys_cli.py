"""`gateway keys create|list|revoke`: the `/admin/keys` API from a terminal.

Talks to a running gateway over HTTP (the standard library's client: nothing to start), with
an admin key; prints what the API answers, errors included, and exits 1 on an error."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    if not args.admin_key:
        raise SystemExit("an admin key is needed: --admin-key or $GATEWAY_ADMIN_KEY")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        args.url.rstrip("/") + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {args.admin_key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = error.reason
        print(f"error: HTTP {error.code}: {message}", file=sys.stderr)
        raise SystemExit(1) from None
    except urllib.error.URLError as error:
        print(f"error: cannot reach {args.url}: {error.reason}", file=sys.stderr)
        raise SystemExit(1) from None


def _create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "admin": args.admin}
    if args.plan:
        body["plan"] = args.plan
    if args.feature:
        body["feature"] = args.feature
    if args.budget_usd is not None:
        body["budget"] = {"usd": args.budget_usd, "period": args.budget_period}
    if args.tiers:
        body["tiers"] = [tier.strip() for tier in args.tiers.split(",") if tier.strip()]
    if args.expires_at:
        body["expires_at"] = args.expires_at
    created = _call(args, "POST", "/admin/keys", body)
    print(json.dumps(created, indent=2))
    print(f"\nThe secret is shown this once: {created['key']}", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    keys = _call(args, "GET", "/admin/keys")["data"]
    print(f"{'name':24} {'source':8} {'plan':12} {'budget':22} {'spent':>12}  state")
    for key in keys:
        budget = key.get("budget")
        budget_text = f"${budget['usd']:g}/{budget['period']}" if budget else "-"
        spent = key.get("budget_spent_usd")
        spent_text = f"${spent:.6f}" if spent is not None else "-"
        state = (
            "disabled"
            if key.get("disabled")
            else (f"expires {key['expires_at']}" if key.get("expires_at") else "active")
        )
        print(
            f"{key['name']:24} {key['source']:8} {key.get('plan') or '-':12} "
            f"{budget_text:22} {spent_text:>12}  {state}"
        )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    _call(args, "DELETE", "/admin/keys/" + quote(args.name, safe=""))
    print(f"revoked {args.name}")
    return 0


def run_keys_command(args: argparse.Namespace) -> int:
    actions = {"create": _create, "list": _list, "revoke": _revoke}
    return actions[args.action](args)
