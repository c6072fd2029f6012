"""JSON responses with money as exact JSON numbers.

Litestar encodes ``Decimal`` as a string; dashboards and chargeback scripts expect numbers, and a
float would round. msgspec can write a Decimal's exact digits as a JSON number, so every JSON
response of the query service goes through that encoder.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response

from services.query.labels import LabelCache
from services.store import Store
from litestar.serialization import default_serializer

_encoder = msgspec.json.Encoder(enc_hook=default_serializer, decimal_format="number")


def encode_json(content: Any) -> bytes:
    """JSON with decimals as exact numbers, for bodies written outside a response (streams)."""
    return _encoder.encode(content)


def store_of(request: Request) -> Store:
    """The store the app was built with."""
    return request.app.state.store


def labels_of(request: Request) -> LabelCache:
    """The app's key and team labels (``labels.py``)."""
    return request.app.state.labels


class MoneyResponse(Response):
    def render(self, content: Any, media_type: str, enc_hook: Any = default_serializer) -> bytes:
        if isinstance(content, (bytes, str)) or "json" not in media_type:
            return super().render(content, media_type, enc_hook)
        return _encoder.encode(content)
