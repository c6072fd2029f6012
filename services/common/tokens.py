"""Token estimates for text a call will send, with the model's BPE encoding (bpe-openai), or
o200k where the model is not an OpenAI one: an estimate, not the provider's count."""

from __future__ import annotations

from typing import Any

from bpe_openai import UnsupportedModelError, encoding_for_model, get_encoding


def encoding(model: str) -> Any:
    try:
        return encoding_for_model(model)
    except (UnsupportedModelError, KeyError, ValueError):
        return get_encoding("o200k_base")


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
    enc = encoding(model)
    items = messages if isinstance(messages, list) else []
    texts = _texts(items) + _texts(system)
    return sum(len(enc.encode(t)) for t in texts) + 4 * len(items) + 3
