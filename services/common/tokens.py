"""Token estimates for text a call will send, with the model's BPE encoding (bpe-openai), or
o200k where the model is not an OpenAI one: an estimate, not the provider's count.

Three costs of the library shape this module:
- importing it parses its BPE rank files in Python: about 3 s of CPU and 70 MB, in every
  process that imports it. Only sandbox calls and ``/spend/calculate`` count tokens, so the
  library is imported on first use, never at start-up (a gateway restart is not 3 s longer);
- building an encoding copies its 200k ranks and builds tables: 65-400 ms each time. An encoding
  is built once per encoding name (a handful: the cache is bounded whatever model names callers
  send) and kept;
- the first use of an encoding therefore takes seconds: ``prepare`` does it on a worker thread,
  so an event loop keeps answering other calls meanwhile.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

FALLBACK = "o200k_base"
# Model names the library maps to encodings it cannot load (gpt2, r50k, p50k need tiktoken_ext)
# or does not know (every non-OpenAI model) fall back to o200k: an estimate either way.
_FAILURES = (LookupError, ValueError, RuntimeError, OSError)  # LookupError: KeyError too

_bpe: Any = None
_encodings: dict[str, Any] = {}
_build_lock = threading.Lock()


def _library() -> Any:
    global _bpe
    if _bpe is None:
        import bpe_openai  # noqa: PLC0415 - on first use: see the module docstring

        _bpe = bpe_openai
    return _bpe


def encoding_name(model: str) -> str:
    bpe = _library()
    try:
        return str(bpe.encoding_name_for_model(model))
    except (bpe.UnsupportedModelError, *_FAILURES):
        return FALLBACK


def encoding(model: str) -> Any:
    """The model's encoding, built on the first call for its encoding name and kept."""
    name = encoding_name(model)
    enc = _encodings.get(name)
    if enc is not None:
        return enc
    with _build_lock:  # two threads asking at once build it once
        enc = _encodings.get(name)
        if enc is None:
            enc = _encodings[name] = _build(name)
    return enc


def _build(name: str) -> Any:
    bpe = _library()
    try:
        return bpe.get_encoding(name)
    except (bpe.UnsupportedModelError, *_FAILURES):
        if name == FALLBACK:
            raise
        return _encodings.get(FALLBACK) or _encodings.setdefault(FALLBACK, bpe.get_encoding(FALLBACK))


def ready(model: str) -> bool:
    """Whether ``encoding(model)`` is instant: the library imported and the encoding built."""
    return _bpe is not None and encoding_name(model) in _encodings


async def prepare(model: str) -> None:
    """Make ``encoding(model)`` instant, importing and building on a worker thread if needed."""
    if not ready(model):
        await asyncio.to_thread(encoding, model)


def count(model: str, *texts: str) -> int:
    """Tokens of ``texts``, with the model's encoding looked up once. Special-token text
    (``<|endoftext|>``) in a prompt is counted as the plain text it is: providers do not read it
    as a control token in user content, and the library's ``encode`` would refuse it."""
    enc = encoding(model)
    return sum(len(enc.encode_ordinary(text)) for text in texts)


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [t for item in value for t in _texts(item)]
    if isinstance(value, dict):
        return [t for key in ("text", "content", "system") if key in value for t in _texts(value[key])]
    return []


def estimate_prompt_tokens(model: str, messages: Any, system: Any = None) -> int:
    """Tokens of the message text plus the chat format's overhead (about 4 per message, 3 to
    prime the reply), as OpenAI's cookbook counts them."""
    items = messages if isinstance(messages, list) else []
    texts = _texts(items) + _texts(system)
    return count(model, *texts) + 4 * len(items) + 3
