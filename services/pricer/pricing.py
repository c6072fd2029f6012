"""The pricing core: ``price(event, catalog) -> PricedEvent``. Pure, no I/O, deterministic.

Cost rules (every provider is first normalised by the gateway to the convention in
``schemas.events``: ``input_tokens`` includes cache reads and writes):
- uncached input = input - cache reads - cache writes, at the input price;
- cache reads at the cache-read price, cache writes at the cache-write price;
- output (reasoning included) at the output price;
- each part is rounded half-even to the 12 decimals the store keeps; the total is the sum of the
  rounded parts, so parts always add up to the total.
"""

from __future__ import annotations

import decimal
from decimal import Decimal
from typing import Literal

import msgspec

from schemas.events import UsageEvent
from services.pricer.catalog import Catalog, Rates

PricingStatus = Literal[
    "priced",
    "unknown_model",  # no price known for the model: stored at zero cost, repriceable later
    "invalid_usage",  # token counts that cannot be true (negative, cache > input, absurd)
    "no_usage",  # the response carried no usage (e.g. an upstream error): nothing to charge
]

MILLION = Decimal(1_000_000)
QUANTUM = Decimal("1e-12")
ZERO = Decimal(0)
# A single call above this many tokens of one kind is a bug or an attack, not usage.
MAX_TOKENS_PER_CALL = 100_000_000

_CTX = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)


# Structs, not frozen dataclasses: the pricer builds two per event, and a frozen dataclass's
# __init__ (one object.__setattr__ per field) cost more than the arithmetic.
class Cost(msgspec.Struct, frozen=True, gc=False):
    input: Decimal = ZERO
    cache_read: Decimal = ZERO
    cache_write: Decimal = ZERO
    output: Decimal = ZERO

    @property
    def total(self) -> Decimal:
        return self.input + self.cache_read + self.cache_write + self.output


class PricedEvent(msgspec.Struct, frozen=True, gc=False):
    event: UsageEvent
    cost: Cost
    status: PricingStatus
    priced_model: str = ""
    price_source: str = ""


def _part(tokens: int, per_token: Decimal, exact: bool) -> Decimal:
    if not tokens:
        return ZERO  # most calls use no cache writes, many no cache reads: no product to make
    # The product is exact: at most 1e8 tokens (usage_problem) times a price of a few significant
    # digits stays far inside the default context's 28 digits. Rounded half-even to the 12
    # decimals the store keeps; a price with at most 12 decimals per token (every published
    # one) gives a product with at most 12 decimals, which rounding would not change.
    product = per_token * tokens
    return product if exact else product.quantize(QUANTUM, rounding=decimal.ROUND_HALF_EVEN)


def usage_problem(event: UsageEvent) -> str | None:
    """Why the event's token counts cannot be true, or None when they can."""
    read, write, inp, out, reasoning = (event.cache_read_tokens, event.cache_write_tokens, event.input_tokens,
                                        event.output_tokens, event.reasoning_tokens)
    # every call of real traffic passes this one chained comparison; the reasons are found below
    if 0 <= read and 0 <= write and read + write <= inp <= MAX_TOKENS_PER_CALL and 0 <= reasoning <= out <= MAX_TOKENS_PER_CALL:
        return None
    counts = (inp, out, read, write, reasoning)
    if min(counts) < 0:
        return "negative token count"
    if max(counts) > MAX_TOKENS_PER_CALL:
        return "token count above the per-call limit"
    if read + write > inp:
        return "cache tokens exceed input tokens"
    if reasoning > out:
        return "reasoning tokens exceed output tokens"
    return None


def cost_of(event: UsageEvent, rates: Rates) -> Cost:
    uncached = event.input_tokens - event.cache_read_tokens - event.cache_write_tokens
    (inp, read, write, out), exact = rates.per_token, rates.per_token_exact
    return Cost(
        _part(uncached, inp, exact),
        _part(event.cache_read_tokens, read, exact),
        _part(event.cache_write_tokens, write, exact),
        _part(event.output_tokens, out, exact),
    )


def price(event: UsageEvent, catalog: Catalog) -> PricedEvent:
    if usage_problem(event) is not None:
        return PricedEvent(event, Cost(), "invalid_usage")
    if not event.usage_reported and event.input_tokens == 0 and event.output_tokens == 0:
        return PricedEvent(event, Cost(), "no_usage")
    # The returned model is the snapshot actually served; fall back to what was asked for.
    served, asked = event.model, event.model_requested
    models = (served, asked) if served and asked and served != asked else ((served or asked,) if served or asked else ())
    rates = catalog.rates(event.org_id, event.provider, models, event.started_at, event.input_tokens)
    if rates is None:
        return PricedEvent(event, Cost(), "unknown_model")
    return PricedEvent(event, cost_of(event, rates), "priced", rates.model_id, rates.source)
