"""Composition root: the aiohttp application with its routes, middleware and lifecycle."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.http.body import expect_continue
from gateway.http.middleware import OUTERMOST, gateway_middleware
from gateway.http.request import PROCESS
from gateway.ingress import chat, embeddings, models
from gateway.ingress.completions import handler as completions
from gateway.ingress.messages import handler as messages
from gateway.ingress.responses import handler as responses
from gateway.ops import admin, dashboard, health, keys, metrics, usage
from gateway.ops.admin import RELOADER
from gateway.ops.reload import Reloader
from gateway.pipeline.process import GatewayProcess


def create_app(process: GatewayProcess, reloader: Reloader | None = None) -> web.Application:
    # Bodies are read by the handlers under `server.max_body_mb`; aiohttp's own limit is
    # lifted so that one does not answer first with a differently shaped 413.
    # Errors on Anthropic's paths are in Anthropic's dialect; everywhere else in OpenAI's.
    # `Expect: 100-continue` is answered by `expect_continue`: no `100 Continue` for a body
    # over the limit, which then gets its 413 unread.
    app = web.Application(client_max_size=2**62)
    # Not one of aiohttp's middlewares: the server serves the app through it
    # (`GatewayAppRunner`), which saves every stream a coroutine frame (gateway.http.middleware).
    app[OUTERMOST] = gateway_middleware(process, [("/v1/messages", messages.error_response)])
    app[PROCESS] = process
    if reloader is not None:
        app[RELOADER] = reloader
    app.router.add_post(
        "/v1/chat/completions", chat.chat_completions, expect_handler=expect_continue
    )
    app.router.add_post("/v1/embeddings", embeddings.embeddings, expect_handler=expect_continue)
    app.router.add_post("/v1/completions", completions.completions, expect_handler=expect_continue)
    app.router.add_post("/v1/responses", responses.create_response, expect_handler=expect_continue)
    app.router.add_get("/v1/responses/{response_id}", responses.get_response)
    app.router.add_delete("/v1/responses/{response_id}", responses.delete_response)
    app.router.add_post("/v1/messages", messages.messages, expect_handler=expect_continue)
    app.router.add_post(
        "/v1/messages/count_tokens", messages.count_tokens, expect_handler=expect_continue
    )
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{model}", models.get_model)
    app.router.add_get("/v1/usage", usage.usage)
    app.router.add_get("/dashboard", dashboard.page)
    app.router.add_get("/dashboard/usage", dashboard.usage)
    app.router.add_get("/dashboard/budgets", dashboard.budgets)
    app.router.add_get("/dashboard/{name}", dashboard.asset)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    if process.current.config.server.metrics_port is None:
        app.router.add_get("/metrics", metrics.metrics)
    app.router.add_post("/admin/reload", admin.reload_config, expect_handler=expect_continue)
    app.router.add_post("/admin/keys", keys.create_key, expect_handler=expect_continue)
    app.router.add_get("/admin/keys", keys.list_keys)
    app.router.add_patch("/admin/keys/{name}", keys.update_key, expect_handler=expect_continue)
    app.router.add_delete("/admin/keys/{name}", keys.delete_key)
    app.cleanup_ctx.append(_process_lifecycle)
    return app


async def _process_lifecycle(app: web.Application) -> AsyncIterator[None]:
    process = app[PROCESS]
    reloader = app.get(RELOADER)
    await process.start()
    if reloader is not None:
        reloader.start()
    yield
    if reloader is not None:
        await reloader.stop()
    await process.aclose()


def create_metrics_app(process: GatewayProcess) -> web.Application:
    """`/metrics` alone, for `server.metrics_port`: scraping stays off the public port."""
    app = web.Application()
    app[PROCESS] = process
    app.router.add_get("/metrics", metrics.metrics)
    return app
