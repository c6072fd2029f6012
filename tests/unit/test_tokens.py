"""Token estimates (sandbox replies, ``/spend/calculate``): what they count, which encoding they
use, and what they cost the process that serves them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from services.common import tokens


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_starting_a_service_does_not_load_the_tokenizer() -> None:
    # Its import parses BPE rank files: seconds and tens of MB that a gateway pays on every
    # start (and restart) though only sandbox calls count tokens.
    assert _python("""
        import sys
        import services.runtime, services.gateway.app, services.query.app
        print(sorted(m for m in sys.modules if m.startswith("bpe_openai")))
    """) == "[]"


def test_the_first_load_runs_off_the_event_loop() -> None:
    # In a fresh process, where nothing is loaded yet: a 10 ms timer on the loop keeps firing
    # while prepare() imports the library and builds the encoding (about 3 s of CPU).
    out = _python("""
        import asyncio, time
        from services.common import tokens

        async def main():
            ticks = 0
            async def tick():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1
            timer = asyncio.create_task(tick())
            await asyncio.sleep(0)
            started = time.monotonic()
            await tokens.prepare("gpt-4o")
            took = time.monotonic() - started
            timer.cancel()
            print(ticks, took, tokens.ready("gpt-4o"))

        asyncio.run(main())
    """)
    ticks, took, ready = out.split()
    assert ready == "True"
    # the loop ran at least a fifth of the 10 ms slots of the load (it shares the GIL with it)
    assert int(ticks) >= float(took) / 0.01 / 5, out


def test_an_encoding_is_built_once_per_encoding_name() -> None:
    # Building one copies 200k ranks (tens to hundreds of ms): a call must not pay it again.
    assert tokens.encoding("gpt-4o") is tokens.encoding("gpt-4o-mini") is tokens.encoding("gpt-4o")
    assert tokens.encoding("claude-sonnet-4-5") is tokens.encoding("some-unknown-model") is tokens.encoding("gpt-4o")


@pytest.mark.parametrize(("model", "name"), [
    ("gpt-4o", "o200k_base"), ("gpt-4o-mini", "o200k_base"), ("gpt-4", "cl100k_base"), ("gpt-3.5-turbo", "cl100k_base"),
    ("claude-sonnet-4-5", "o200k_base"), ("", "o200k_base"), ("gpt-4o-2024-08-06", "o200k_base"),
    # the library maps these to encodings it cannot load without tiktoken_ext: estimated with o200k
    ("text-davinci-003", "o200k_base"), ("gpt2", "o200k_base"),
])
def test_the_model_chooses_the_encoding_and_anything_else_falls_back_to_o200k(model: str, name: str) -> None:
    assert tokens.encoding(model).name == name
    assert tokens.count(model, "hello there") == 2


def test_special_token_text_in_a_prompt_is_counted_as_text() -> None:
    # A prompt may quote "<|endoftext|>" (a user asking about tokenizers); providers read it as
    # text, and an estimate must count it rather than refuse the call.
    assert tokens.count("gpt-4o", "<|endoftext|>") == len(tokens.encoding("gpt-4o").encode_ordinary("<|endoftext|>")) > 1
    messages = [{"role": "user", "content": "what is <|endoftext|>?"}]
    assert tokens.estimate_prompt_tokens("gpt-4", messages) == tokens.count("gpt-4", "what is <|endoftext|>?") + 4 + 3


def test_message_text_and_system_prompts_are_counted_with_the_chat_overhead() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "hello there"}, {"type": "image_url"}]},
                {"role": "assistant", "content": "hello there"}]
    assert tokens.estimate_prompt_tokens("gpt-4o", messages, system="hello there") == 3 * 2 + 2 * 4 + 3
    assert tokens.estimate_prompt_tokens("gpt-4o", "not a list") == 3
