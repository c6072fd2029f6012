"""The gateway's HTTP surface: the two proxy prefixes and a health check."""

from __future__ import annotations

from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException

from services.gateway.errors import error_response
from services.gateway.proxy import Proxy


@post("/api/proxy/v1/openai/{route:path}", status_code=200)
async def openai_proxy(request: Request, route: str) -> Response:
    return await request.app.state.proxy.handle(request, "openai", route)


@post("/api/proxy/v1/anthropic/{route:path}", status_code=200)
async def anthropic_proxy(request: Request, route: str) -> Response:
    return await request.app.state.proxy.handle(request, "anthropic", route)


@get("/healthz", sync_to_thread=False)
def healthz(request: Request) -> dict[str, object]:
    publisher = request.app.state.publisher
    return {"status": "ok", "event_backlog": publisher.backlog, "events_dropped": publisher.dropped}


def _on_http_error(request: Request, exc: HTTPException) -> Response:
    provider = "anthropic" if "/anthropic/" in request.url.path else "openai"
    return error_response(provider, exc.status_code, str(exc.detail))


def create_app(proxy: Proxy, publisher: object) -> Litestar:
    app = Litestar(
        route_handlers=[openai_proxy, anthropic_proxy, healthz],
        exception_handlers={HTTPException: _on_http_error},
        # The proxy enforces its own (configurable) limit while streaming the body in.
        request_max_body_size=None,
        openapi_config=None,
        debug=False,
    )
    app.state.proxy = proxy
    app.state.publisher = publisher
    return app
