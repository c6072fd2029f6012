"""The price catalog: which per-token prices apply to a call, at the time it was made.

Two sources, in order of precedence:
1. overrides kept in ClickHouse (negotiated or custom prices), per organisation or for all
   organisations, each effective from a date;
2. the genai-prices catalog, which carries the providers' published prices and their history.

Pure: the overrides are handed in; loading them is the pricer's job (``catalog_loader``).
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from genai_prices import data_snapshot
from genai_prices.types import ModelPrice, TieredPrices

_PER_MTOK = "per_mtok"


@dataclass(frozen=True)
class Rates:
    """USD per million tokens for each kind of token, as the provider bills them."""

    input: Decimal
    cache_read: Decimal
    cache_write: Decimal
    output: Decimal
    model_id: str  # the catalog entry that matched, e.g. "gpt-4o"
    source: str  # "genai-prices" or "override"

    @functools.cached_property
    def per_token(self) -> tuple[Decimal, Decimal, Decimal, Decimal]:
        """(input, cache read, cache write, output) in USD per token: exact, since dividing a
        decimal by 10**6 only moves its point."""
        return tuple(p.scaleb(-6) for p in (self.input, self.cache_read, self.cache_write, self.output))  # type: ignore[return-value]

    @functools.cached_property
    def per_token_exact(self) -> bool:
        """Whether every per-token price has at most the 12 decimals the store keeps, so that a
        cost (price × a whole number of tokens) needs no rounding."""
        return all(p.as_tuple().exponent >= -12 for p in self.per_token)  # type: ignore[operator]


@dataclass(frozen=True)
class PriceOverride:
    org_id: str  # "" applies to every organisation
    provider: str
    model: str
    effective_from: datetime
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Decimal | None = None  # None: cache reads cost the input price
    cache_write_per_mtok: Decimal | None = None  # None: cache writes cost the input price

    def rates(self) -> Rates:
        return Rates(
            input=self.input_per_mtok,
            cache_read=self.input_per_mtok if self.cache_read_per_mtok is None else self.cache_read_per_mtok,
            cache_write=self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok,
            output=self.output_per_mtok,
            model_id=self.model,
            source="override",
        )


def _tier_price(price: Decimal | TieredPrices | None, total_input_tokens: int) -> Decimal | None:
    """Resolve tiered prices the way the providers do: crossing a threshold applies the tier's
    rate to every token of the call, not just the ones above it."""
    if price is None or isinstance(price, Decimal):
        return price
    applicable = price.base
    for tier in reversed(price.tiers):
        if total_input_tokens > tier.start:
            applicable = tier.price
            break
    return applicable


@functools.lru_cache(maxsize=4096)
def _catalog_entry(provider: str, model: str, minute: datetime) -> tuple[tuple[int, ...], tuple[Rates | None, ...]] | None:
    """The rates of a catalog entry in force during one minute: one per size band of a tiered
    price (the tier thresholds in ``starts``), a single one for a flat price. Cached: a batch
    prices thousands of calls of a few models within the same minutes (catalog prices change
    at a date or a time of day, never within a minute), so per call pricing is two lookups."""
    snapshot = data_snapshot.get_snapshot()
    try:
        _, info = snapshot.find_provider_model(model, None, provider, None)
    except LookupError:
        return None
    prices = info.get_prices(minute)
    starts = tuple(sorted({t.start for v in vars(prices).values() if isinstance(v, TieredPrices) for t in v.tiers}))
    # Band i holds calls with more input tokens than starts[i - 1] and no more than starts[i].
    bands = tuple(_rates_from(info.id, prices, start + 1 if i else 0) for i, start in enumerate((0, *starts)))
    return starts, bands


# (provider, model, minute since the epoch) -> _catalog_entry(...): the per-call lookup. Keyed by
# an integer rather than a datetime (hashing an aware datetime asks its tzinfo for the offset),
# and bounded like the lru_cache behind it.
_entries: dict[tuple[str, str, int], tuple[tuple[int, ...], tuple[Rates | None, ...]] | None] = {}
_MISSING = object()


def published_rates(provider: str, model: str, at: datetime, total_input_tokens: int) -> Rates | None:
    """The provider's published prices from genai-prices, or None for a model it does not know."""
    key = (provider, model, int(at.timestamp()) // 60)
    found = _entries.get(key, _MISSING)
    if found is _MISSING:
        if len(_entries) >= 4096:
            _entries.clear()
        found = _entries[key] = _catalog_entry(provider, model, at.replace(second=0, microsecond=0))
    if found is None:
        return None
    starts, bands = found
    return bands[bisect.bisect_left(starts, total_input_tokens)] if starts else bands[0]


def _rates_from(model_id: str, prices: ModelPrice, total_input_tokens: int) -> Rates | None:
    input_price = _tier_price(prices.input_mtok, total_input_tokens)
    if input_price is None:
        return None  # priced per request, per second, ...: not a token model we can meter
    # Embedding models bill input only: no output price means output is free, not unknown.
    output_price = _tier_price(prices.output_mtok, total_input_tokens) or Decimal(0)
    cache_read = _tier_price(prices.cache_read_mtok, total_input_tokens)
    cache_write = _tier_price(prices.cache_write_mtok, total_input_tokens)
    return Rates(
        input=input_price,
        # A model without a cache price bills those tokens as ordinary input (as genai-prices does).
        cache_read=input_price if cache_read is None else cache_read,
        cache_write=input_price if cache_write is None else cache_write,
        output=output_price,
        model_id=model_id,
        source="genai-prices",
    )


@dataclass
class Catalog:
    """Overrides indexed for lookup by (org, provider, model), each list sorted by effective date."""

    _overrides: dict[tuple[str, str, str], list[PriceOverride]] = field(default_factory=dict)

    @classmethod
    def from_overrides(cls, overrides: Iterable[PriceOverride]) -> Catalog:
        index: dict[tuple[str, str, str], list[PriceOverride]] = {}
        for o in overrides:
            index.setdefault((o.org_id, o.provider, o.model.lower()), []).append(o)
        for entries in index.values():
            entries.sort(key=lambda o: o.effective_from)
        return cls(index)

    def _override(self, org_id: str, provider: str, model: str, at: datetime) -> PriceOverride | None:
        if not self._overrides:
            return None  # the common case, and the pricer asks per call
        for org in (org_id, ""):  # the organisation's own price wins over a global one
            entries = self._overrides.get((org, provider, model.lower()))
            if not entries:
                continue
            i = bisect.bisect_right([o.effective_from for o in entries], at)
            if i:
                return entries[i - 1]
        return None

    def rates(
        self, org_id: str, provider: str, models: Sequence[str], at: datetime, total_input_tokens: int
    ) -> Rates | None:
        """Prices for the first of ``models`` (e.g. the dated snapshot returned, then the name
        asked for) that has any. An override on *any* of the names beats the published catalog,
        so an override on "gpt-4o" applies to calls served by "gpt-4o-2024-08-06"."""
        for model in models:
            override = self._override(org_id, provider, model, at)
            if override is not None:
                return override.rates()
        for model in models:
            rates = published_rates(provider, model, at, total_input_tokens)
            if rates is not None:
                return rates
        return None


def provider_of(model: str) -> str | None:
    """Which of the metered providers publishes ``model`` (for usage reported without one)."""
    snapshot = data_snapshot.get_snapshot()
    for provider in ("openai", "anthropic"):
        try:
            snapshot.find_provider_model(model, None, provider, None)
        except LookupError:
            continue
        return provider
    return None
