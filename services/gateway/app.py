"""The gateway's HTTP surface: the two proxy prefixes (served straight on ASGI, see ``asgi.py``),
the usage record API, health and metrics."""

from __future__ import annotations

from dataclasses import asdict

from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException

from services.gateway.asgi import GatewayFront
from services.gateway.errors import error_response
from services.gateway import records
from services.common.credentials import bearer_key
from services.gateway.proxy import Proxy
from services.gateway.publisher import EventPublisher


@post("/v1/usage/record", status_code=200)
async def record_usage(request: Request) -> Response:
    """Usage that did not go through the proxy, metered like proxied usage."""
    proxy: Proxy = request.app.state.proxy
    return await records.handle(request, proxy.auth, request.app.state.publisher, bearer_key(request.headers))


@get("/healthz", sync_to_thread=False)
def healthz(request: Request) -> dict[str, object]:
    publisher: EventPublisher = request.app.state.publisher
    return {"status": "ok", "event_backlog": publisher.backlog, "spool_bytes": publisher.spool_bytes,
            **asdict(publisher.stats)}


@get("/metrics", sync_to_thread=False, media_type="text/plain; version=0.0.4")
def metrics(request: Request) -> str:
    """Prometheus text format: the numbers to alert on (dropped above zero, spool growing)."""
    publisher: EventPublisher = request.app.state.publisher
    values = {
        "meterline_gateway_events_published_total": publisher.stats.published,
        "meterline_gateway_events_spooled_total": publisher.stats.spooled,
        "meterline_gateway_events_replayed_total": publisher.stats.replayed,
        "meterline_gateway_events_dropped_total": publisher.stats.dropped,
        "meterline_gateway_publish_failures_total": publisher.stats.send_failures,
        "meterline_gateway_event_queue_depth": publisher.backlog,
        "meterline_gateway_spool_bytes": publisher.spool_bytes,
    }
    return "".join(f"{name} {value}\n" for name, value in values.items())


def _on_http_error(request: Request, exc: HTTPException) -> Response:
    provider = "anthropic" if "/anthropic/" in request.url.path else "openai"
    return error_response(provider, exc.status_code, str(exc.detail))


def create_app(proxy: Proxy, publisher: EventPublisher) -> GatewayFront:
    app = Litestar(
        route_handlers=[record_usage, healthz, metrics],
        exception_handlers={HTTPException: _on_http_error},
        openapi_config=None,
        debug=False,
    )
    app.state.proxy = proxy
    app.state.publisher = publisher
    return GatewayFront(proxy, app)
