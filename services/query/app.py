"""The query service: control plane and spend aggregations over ClickHouse.

Handlers are thin: they authenticate, validate parameters and call a named service function.
"""

from __future__ import annotations

import calendar
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec
import structlog
from litestar import Litestar, Request, Response, delete, get, post
from litestar.di import Provide
from litestar.exceptions import HTTPException, NotFoundException, PermissionDeniedException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.params import Parameter

from services.common.settings import QuerySettings
from services.query import aggregations as agg
from services.query import analytics_routes, billing_routes, spend_routes
from services.query import control
from services.query.auth import KeyResolver, Principal, principal_of, require_admin
from services.query.params import parse_instant
from services.query.labels import LabelCache
from services.query.responses import MoneyResponse, labels_of, store_of
from services.store import Store, StoreError

log = structlog.get_logger(__name__)

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
PromptKey = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:/-]+$")]


class OrgIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Name


class TeamIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Name


class KeyIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Name = "api key"
    team_id: str = ""
    role: Literal["admin", "member"] = "member"


class VersionIn(msgspec.Struct, forbid_unknown_fields=True):
    model: str = ""
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] | None = None
    activate: bool = True


class PromptIn(msgspec.Struct, forbid_unknown_fields=True):
    prompt_key: PromptKey
    description: str = ""
    model: str = ""
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] | None = None


class PriceOverrideIn(msgspec.Struct, forbid_unknown_fields=True):
    """USD per million tokens, as exact decimals (strings or JSON numbers)."""

    provider: Literal["openai", "anthropic"]
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    effective_from: datetime | None = None  # default: now

    def __post_init__(self) -> None:
        for name in ("input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok"):
            value = getattr(self, name)
            if value is not None and not (value.is_finite() and 0 <= value <= 1_000_000):
                raise ValueError(f"{name} must be between 0 and 1000000 USD per million tokens")



def parse_day(value: str | None, name: str) -> date | None:
    """The UTC day of ``YYYY-MM-DD`` or a full ISO 8601 timestamp; 400 naming the parameter."""
    instant = parse_instant(value, name)
    return None if instant is None else instant.date()


def window(principal: Principal, start: str | None, end: str | None, provider: str | None, include_sandbox: bool) -> agg.Window:
    today = datetime.now(timezone.utc).date()
    first = today.replace(day=1)
    last = today.replace(day=calendar.monthrange(today.year, today.month)[1])
    s = parse_day(start, "start") or first
    e = parse_day(end, "end") or (last if start is None else max(s, last))
    if e < s:
        raise ValidationException("end: must not be before start")
    if provider not in (None, "", "openai", "anthropic"):
        raise ValidationException(f"provider: expected openai or anthropic, got {provider!r}")
    return agg.Window(principal.org_id, s, e, provider or "", include_sandbox)


# -- handlers ------------------------------------------------------------------------------


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/api/auth/whoami")
async def whoami(principal: Principal) -> dict[str, str]:
    """Who a platform key belongs to. The gateway authenticates proxy calls through this."""
    return {"org_id": principal.org_id, "key_id": principal.key_id, "team_id": principal.team_id, "role": principal.role}


@post("/api/orgs", guards=[require_admin], status_code=201)
async def create_org(request: Request, principal: Principal, data: OrgIn) -> dict[str, Any]:
    """Operator only: a new tenant organisation and its first admin key (shown once)."""
    store = store_of(request)
    if not await control.is_operator(store, principal.org_id):
        raise PermissionDeniedException("only the operator organisation's admins create organisations")
    org_id, key = await control.create_org(store, data.name)
    return {"org_id": org_id, "name": data.name, "admin_key": key}


@post("/api/teams", guards=[require_admin], status_code=201)
async def create_team(request: Request, principal: Principal, data: TeamIn) -> dict[str, Any]:
    team = await control.create_team(store_of(request), principal.org_id, data.name)
    labels_of(request).forget(principal.org_id)
    return team


@get("/api/teams")
async def list_teams(request: Request, principal: Principal) -> dict[str, Any]:
    return {"teams": await control.list_teams(store_of(request), principal.org_id)}


@post("/api/keys", guards=[require_admin], status_code=201)
async def create_key(request: Request, principal: Principal, data: KeyIn) -> dict[str, Any]:
    key = await control.create_key(store_of(request), principal.org_id, data.name, data.team_id, data.role)
    labels_of(request).forget(principal.org_id)
    return key


@get("/api/keys", guards=[require_admin])
async def list_keys(request: Request, principal: Principal) -> dict[str, Any]:
    return {"keys": await control.list_keys(store_of(request), principal.org_id)}


@delete("/api/keys/{key_id:str}", guards=[require_admin], status_code=200)
async def revoke_key(request: Request, principal: Principal, key_id: str) -> dict[str, Any]:
    revoked = await control.revoke_key(store_of(request), principal.org_id, key_id)
    request.app.state.key_resolver.forget_key_id(key_id)
    return revoked


@post("/api/prompts", guards=[require_admin], status_code=201)
async def create_prompt(request: Request, principal: Principal, data: PromptIn) -> dict[str, Any]:
    version = {"model": data.model, "temperature": data.temperature, "max_tokens": data.max_tokens}
    return await control.create_prompt(store_of(request), principal.org_id, data.prompt_key, data.description, version)


@get("/api/prompts")
async def list_prompts(request: Request, principal: Principal) -> dict[str, Any]:
    return {"prompts": await control.list_prompts(store_of(request), principal.org_id)}


@get("/api/prompts/{prompt_key:str}")
async def get_prompt(request: Request, principal: Principal, prompt_key: str) -> dict[str, Any]:
    return await control.get_prompt(store_of(request), principal.org_id, prompt_key)


@post("/api/prompts/{prompt_key:str}/versions", guards=[require_admin], status_code=201)
async def add_version(request: Request, principal: Principal, prompt_key: str, data: VersionIn) -> dict[str, Any]:
    version = {"model": data.model, "temperature": data.temperature, "max_tokens": data.max_tokens}
    return await control.add_version(store_of(request), principal.org_id, prompt_key, version, data.activate)


@post("/api/prompts/{prompt_key:str}/versions/{n:int}/activate", guards=[require_admin], status_code=200)
async def activate_version(request: Request, principal: Principal, prompt_key: str, n: int) -> dict[str, Any]:
    return await control.activate_version(store_of(request), principal.org_id, prompt_key, n)


@post("/api/prices", guards=[require_admin], status_code=201)
async def set_price(request: Request, principal: Principal, data: PriceOverrideIn) -> dict[str, Any]:
    """Override the catalog price of a model for this organisation (USD per million tokens)."""
    effective = data.effective_from or datetime.now(timezone.utc)
    if effective.tzinfo is None:
        effective = effective.replace(tzinfo=timezone.utc)
    override = {**msgspec.structs.asdict(data), "effective_from": effective}
    return await control.set_price_override(store_of(request), principal.org_id, override)


@get("/api/prices")
async def list_prices(request: Request, principal: Principal) -> dict[str, Any]:
    return {"overrides": await control.list_price_overrides(store_of(request), principal.org_id)}


_Start = Annotated[str | None, Parameter(description="first day, YYYY-MM-DD or ISO 8601 (UTC)")]
_End = Annotated[str | None, Parameter(description="last day, inclusive")]
_Provider = Annotated[str | None, Parameter(description="openai or anthropic")]


async def span_of(
    principal: Principal, start: _Start = None, end: _End = None, provider: _Provider = None,
    include_sandbox: bool = False,
) -> agg.Window:
    """Dependency: the caller's organisation and the validated date window of an aggregation."""
    return window(principal, start, end, provider, include_sandbox)


@get("/api/aggregations/monthly")
async def monthly(request: Request, span: agg.Window) -> dict[str, Any]:
    return await agg.monthly(store_of(request), span)


@get("/api/aggregations/by-prompt")
async def by_prompt(request: Request, span: agg.Window) -> dict[str, Any]:
    return await agg.by_prompt(store_of(request), span)


@get("/api/aggregations/by-team")
async def by_team(request: Request, span: agg.Window) -> dict[str, Any]:
    return await agg.by_team(store_of(request), labels_of(request), span)


@get("/api/aggregations/version-comparison")
async def version_comparison(request: Request, span: agg.Window, prompt_key: str | None = None) -> dict[str, Any]:
    if not prompt_key:
        raise ValidationException("prompt_key: required")
    return await agg.version_comparison(store_of(request), span, prompt_key)


# -- errors --------------------------------------------------------------------------------


def _error(status: int, message: str) -> Response:
    return MoneyResponse({"error": {"status": status, "message": message}}, status_code=status)


def _on_http(_: Request, exc: HTTPException) -> Response:
    message = exc.detail
    extra = getattr(exc, "extra", None)
    if isinstance(exc, ValidationException) and extra:
        message = f"{exc.detail}: {extra}"
    return _error(exc.status_code, str(message))


def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", path=request.url.path, error=repr(exc), exc_info=exc)
    return _error(500, "internal error")


def _on_store(request: Request, exc: StoreError) -> Response:
    log.error("store error", path=request.url.path, error=str(exc)[:500])
    return _error(503, "the store is unavailable; try again")


def create_app(store: Store, settings: QuerySettings) -> Litestar:
    route_handlers = [*spend_routes.HANDLERS, *billing_routes.HANDLERS, *analytics_routes.HANDLERS, 
        healthz, whoami, create_org, create_team, list_teams, create_key, list_keys, revoke_key,
        set_price, list_prices, create_prompt, list_prompts, get_prompt, add_version, activate_version,
        monthly, by_prompt, by_team, version_comparison,
    ]
    app = Litestar(
        route_handlers=route_handlers,
        dependencies={"principal": Provide(principal_of), "span": Provide(span_of)},
        response_class=MoneyResponse,
        exception_handlers={
            HTTPException: _on_http,
            control.Conflict: lambda _, exc: _error(409, str(exc)),
            control.NotFound: lambda _, exc: _error(404, str(exc)),
            NotFoundException: lambda _, exc: _error(404, str(exc.detail)),
            StoreError: _on_store,
            Exception: _on_unexpected,
        },
        openapi_config=OpenAPIConfig(title="Meterline query API", version="1"),
        debug=False,
    )
    app.state.store = store
    app.state.key_resolver = KeyResolver(store, settings.key_cache_ttl_s)
    app.state.labels = LabelCache(store)
    return app
