"""``meterline``: the one command.

    meterline up         the embedded default: broker, gateway, pricer and query in one go
    meterline gateway    production: the proxy alone (Kafka + query service)
    meterline pricer     production: the consumer alone (Kafka + ClickHouse)
    meterline query      production: the read API and control plane (ClickHouse)
    meterline migrate    apply ClickHouse migrations and exit
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from pathlib import Path
from typing import Any

from services.common.logging import configure
from services.common.settings import Settings, SettingsError, load_settings


def _announce(settings: Settings, boot: Any) -> None:
    gw = f"http://127.0.0.1:{settings.gateway.port}"
    q = f"http://127.0.0.1:{settings.query.port}"
    key = boot.admin_key or "<your admin key>"
    lines = [
        "",
        "Meterline is up.",
        f"  gateway  {gw}/api/proxy/v1/openai  and  {gw}/api/proxy/v1/anthropic",
        f"  query    {q}/api  (OpenAPI at {q}/schema)",
        f"  store    {settings.store.url.split('@')[-1]}",
    ]
    if boot.admin_key:
        lines += ["", f"Admin key (shown once, store it now): {boot.admin_key}"]
    lines += [
        "",
        "Try it:",
        f"  curl -s {gw}/api/proxy/v1/openai/chat/completions \\",
        f"    -H 'Authorization: Bearer {key}' -H \"X-Provider-Key: $OPENAI_API_KEY\" \\",
        "    -H 'Content-Type: application/json' \\",
        "    -d '{\"model\": \"gpt-4o-mini\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'",
        f"  curl -s {q}/api/aggregations/monthly -H 'Authorization: Bearer {key}'",
        "",
        "  from openai import OpenAI",
        f"  client = OpenAI(base_url='{gw}/api/proxy/v1/openai', api_key='{key}',",
        "                  default_headers={'X-Provider-Key': os.environ['OPENAI_API_KEY']})",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), flush=True)


def _tune_gc() -> None:
    """Batches of tens of thousands of rows are short-lived, acyclic garbage: collect the young
    generation less often, and leave everything loaded at start-up (modules, the price catalog)
    out of every later collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _run(main: Any) -> Any:
    """Run the service on uvloop where it exists (Linux, macOS): a libuv loop makes the
    gateway's per-call socket work several times cheaper than asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meterline", description="Self-hosted LLM spend metering.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the embedded default stack")
    up.add_argument("--data-dir", type=Path, default=None, help="where chDB keeps its data (default ./.meterline)")
    for name in ("gateway", "pricer", "query", "migrate"):
        sub.add_parser(name, help=f"run the {name} alone (production)")
    args = parser.parse_args(argv)

    try:
        settings = load_settings(data_dir=getattr(args, "data_dir", None))
    except SettingsError as exc:
        print(f"meterline: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_level, settings.log_json)

    from services import runtime  # heavy imports after argument errors have had their say

    _tune_gc()

    try:
        if args.command == "up":
            _run(runtime.run_embedded(settings, _announce))
        elif args.command == "gateway":
            _run(runtime.run_gateway(settings))
        elif args.command == "pricer":
            _run(runtime.run_pricer(settings))
        elif args.command == "query":
            _run(runtime.run_query(settings, _announce))
        elif args.command == "migrate":
            applied = _run(runtime.run_migrate(settings))
            print(f"applied migrations: {applied or 'none (up to date)'}")
    except KeyboardInterrupt:
        pass
    except runtime.StartupError as exc:
        print(f"meterline: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
