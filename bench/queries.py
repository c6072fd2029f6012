"""Query latency at scale (issue 5): p50/p95 of every aggregation endpoint over HTTP at two sizes.

One organisation in a fresh chDB directory, grown to the small size (1M events; --quick: 20k),
then copied and the copy grown to the large size (9M more, to 10M; --quick: to 200k), each step
by a loader process:
  control plane  50 teams, 500 keys, 200 prompts with 1-3 versions, 1,000 customers (--quick: a
                 fifth of each), made by the product's own control-plane functions (first step)
  events         priced rows spread over the last 90 days, each batch in time order as a pricer
                 batch is, written directly but checked byte for byte against UsageEvent ->
                 PricedEvent (costs from the real price catalog) -> rows.to_row -> the store's
                 row encoder, and inserted with the store's insert (JSONEachRow, the sink's
                 insert settings, a deduplication token), so every rollup and projection fires
Then the real query service (``meterline query``) is started on each directory, both at once,
and every aggregation endpoint is timed over HTTP (30- and 90-day windows): warm-up, then
sequential requests in rounds, each endpoint asked of both sizes back to back, so the two are
measured side by side and their ratio holds on a noisy machine. Reported: p50/p95 per endpoint
and size, the large/small ratio, and which miss the targets (p95 <= 50 ms at the large size,
ratio <= 1.5).

Loader and server are separate processes because one chDB directory belongs to one process;
the process running this script never opens a store.

    python bench/queries.py --quick     # 20k and 200k events, for CI
    python bench/queries.py             # 1M and 10M events
    python bench/queries.py --sizes 100000,1000000
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# the repository, for services and schemas; bench/ itself, for its sibling modules (run alone or by run.py)
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import httpx  # noqa: E402
from percentiles import percentile  # noqa: E402

DAYS, FEATURES, USERS_PER_CUSTOMER = 90, 20, 5
# The organisation's dimensions. --quick makes a fifth of them: through the control plane's own
# functions, 50 teams, 500 keys and 200 prompts take most of a minute to make on 2 cores.
DIMENSIONS = {False: {"teams": 50, "keys": 500, "prompts": 200, "customers": 1_000},
              True: {"teams": 10, "keys": 100, "prompts": 40, "customers": 200}}
BATCH = 100_000
TOPIC = "meterline.usage.raw"
P95_TARGET_MS = 50.0
RATIO_TARGET = 1.5
SIZES = {False: (1_000_000, 10_000_000), True: (20_000, 200_000)}
REQUESTS = {False: 50, True: 10}
WARMUP = 3
FLOOR = "auth/whoami (floor)"
BUDGET_S = {False: 30.0, True: 4.0}  # per endpoint: a very slow one is measured on fewer requests (5 at least)

# (provider, model as served, route, share of calls without a prompt)
MODELS = [
    ("openai", "gpt-4o-2024-08-06", "chat/completions", 14),
    ("openai", "gpt-4o-mini-2024-07-18", "chat/completions", 22),
    ("openai", "gpt-4.1-2025-04-14", "responses", 8),
    ("openai", "gpt-4.1-mini-2025-04-14", "responses", 10),
    ("openai", "gpt-5-2025-08-07", "responses", 6),
    ("openai", "o3-mini-2025-01-31", "chat/completions", 3),
    ("anthropic", "claude-sonnet-4-5", "messages", 20),
    ("anthropic", "claude-haiku-4-5", "messages", 12),
    ("anthropic", "claude-opus-4-1-20250805", "messages", 5),
]


def _zipf(n: int, s: float) -> list[float]:
    """Cumulative weights of a Zipf distribution over n items (a few are used a lot)."""
    acc, out = 0.0, []
    for k in range(1, n + 1):
        acc += 1 / k**s
        out.append(acc)
    return out


# -- loading (runs in its own process: ``--load DIR --events N``) ---------------------------


def _token_pool(rng: random.Random, provider: str, model: str, route: str, size: int = 256) -> list[tuple]:
    """Token counts of ``size`` typical calls of a model, each priced once by the real pricing
    core; rows then reuse them, so generation stays fast and every cost is the catalog's."""
    from schemas.events import UsageEvent
    from services.pricer.catalog import Catalog
    from services.pricer.pricing import price

    catalog = Catalog()
    at = datetime.now(timezone.utc)
    pool = []
    for _ in range(size):
        inp = int(rng.lognormvariate(7.2, 0.9)) + 20
        cache_read = int(inp * rng.choice((0, 0, 0.3, 0.6, 0.9))) if inp > 1024 else 0
        cache_write = int((inp - cache_read) * 0.5) if provider == "anthropic" and rng.random() < 0.1 else 0
        out = int(rng.lognormvariate(5.3, 0.9)) + 1
        reasoning = int(out * 0.6) if model.startswith(("o3", "gpt-5")) else 0
        event = UsageEvent(event_id=str(uuid.uuid4()), request_id="", org_id="", provider=provider, route=route,
                           model=model, model_requested=model, started_at=at, input_tokens=inp, output_tokens=out,
                           cache_read_tokens=cache_read, cache_write_tokens=cache_write, reasoning_tokens=reasoning)
        priced = price(event, catalog)
        assert priced.status == "priced", (model, priced.status)
        pool.append(_usage(inp, out, cache_read, cache_write, reasoning, priced.cost, "priced", priced.priced_model,
                           priced.price_source))
    return pool


def _usage(inp: int, out: int, read: int, write: int, reasoning: int, cost: Any, status: str, priced_model: str,
           source: str) -> tuple[str, str]:
    """A call's usage as the two pieces of its row's JSON (what comes after ``priced_model`` and
    after ``sandbox``), written by the store's row encoder from the pricer's values."""
    from services.store.base import encode_rows

    return (
        encode_rows([{"priced_model": priced_model}])[1:-2].decode(),
        encode_rows([{
            "usage_reported": status != "no_usage", "input_tokens": inp, "output_tokens": out,
            "cache_read_tokens": read, "cache_write_tokens": write, "reasoning_tokens": reasoning,
            "input_cost": cost.input, "cache_read_cost": cost.cache_read, "cache_write_cost": cost.cache_write,
            "output_cost": cost.output, "total_cost": cost.total, "pricing_status": status, "price_source": source,
        }])[1:-2].decode(),
    )


def _json(**fields: Any) -> str:
    """Fields as a piece of a JSON object (no braces), written by the store's row encoder."""
    from services.store.base import encode_rows

    return encode_rows([fields])[1:-2].decode()


class Population:
    """The organisation's dimensions (made through the control plane) and how calls spread over
    them: keys and prompts belong to teams, each prompt to a feature and each of its versions to
    a model; a few prompts, keys and customers carry most of the traffic."""

    def __init__(self, org: dict[str, Any], seed: int) -> None:
        from services.pricer.pricing import Cost

        self.rng = random.Random(seed)
        self.org_id = org["org_id"]
        self.first_day = date.fromisoformat(org["first_day"])
        self.days = [(self.first_day + timedelta(days=d)).isoformat() for d in range(DAYS + 1)]
        # (team_id, key_id) as JSON, per key and per team
        self.models = [m[1] for m in MODELS]
        self.model_cum = list(itertools.accumulate(m[3] for m in MODELS))
        # (team_id, key_id) as JSON, per key and per team; a key's own calls use its two models
        self.keys = [_json(team_id=team, key_id=key) for key, team in org["keys"]]
        self.team_keys: dict[str, list[str]] = {}
        for (key, team), piece in zip(org["keys"], self.keys):
            self.team_keys.setdefault(team, []).append(piece)
        pick = random.Random(2)
        self.key_models = {piece: pick.sample(self.models, 2, counts=[m[3] for m in MODELS]) for piece in self.keys}
        self.prompts = [{**p, "versions": [{**v, "json": _json(prompt_key=p["prompt_key"], prompt_version=v["version"])}
                                           for v in p["versions"]]} for p in org["prompts"]]
        self.no_prompt = _json(prompt_key="", prompt_version=0)
        self.prompt_cum = _zipf(len(self.prompts), 1.0)
        self.key_cum = _zipf(len(self.keys), 0.8)
        customers = org["dimensions"]["customers"]
        self.customers = [f"cust_{i:04d}" for i in range(customers)]
        self.customer_cum = _zipf(customers, 1.1)
        self.features = [f"feature-{i:02d}" for i in range(FEATURES)]
        self.model_json = {m[1]: _json(provider=m[0], route=m[2], model_requested=m[1], model=m[1]) for m in MODELS}
        pool_rng = random.Random(1)  # the same priced calls in every phase
        self.pools = {m[1]: _token_pool(pool_rng, m[0], m[1], m[2]) for m in MODELS}
        self.no_usage = _usage(0, 0, 0, 0, 0, Cost(), "no_usage", "", "")
        self.head = _json(org_id=self.org_id)

    def rows(self, first: int, count: int, total: int, phase: int) -> bytes:
        """The ``usage_events`` rows (JSONEachRow) of calls number ``first`` .. ``first + count``
        of ``total``, in time order over the 90 days (a batch holds a few consecutive hours or
        days, as a pricer batch does). Written directly from pieces the store's encoder wrote,
        ~10x faster than UsageEvent -> rows.to_row -> encoder; ``reference`` checks that they are
        byte for byte what that path writes."""
        rng = self.rng
        span_ms, day_ms = DAYS * 86_400_000, 86_400_000
        prompts = rng.choices(self.prompts, cum_weights=self.prompt_cum, k=count)
        keys = rng.choices(self.keys, cum_weights=self.key_cum, k=count)
        customers = rng.choices(self.customers, cum_weights=self.customer_cum, k=count)
        random_, days, features = rng.random, self.days, self.features
        head, beta = self.head, '["beta"]'
        out = []
        for j in range(count):
            i = first + j
            ms = i * span_ms // total + int(random_() * 1000)
            r, s, u = random_(), random_(), random_()
            day, in_day = divmod(ms, day_ms)
            if r < 0.7:  # a registered prompt: its team's keys, its feature, its version's model
                p = prompts[j]
                version = p["versions"][0]
                for v in p["versions"]:
                    if v["from_day"] <= day:
                        version = v
                model, prompt = version["model"], version["json"]
                team_keys = self.team_keys[p["team_id"]]
                key = team_keys[int(u * 10_000) % len(team_keys)]
                feature = p["feature"]
            else:  # ad-hoc calls
                key = keys[j]
                model, prompt = self.key_models[key][random_() < 0.25], self.no_prompt
                feature = features[int(r * 10_000) % FEATURES] if r < 0.85 else ""
            if s < 0.02:  # upstream refused: no usage, nothing to charge
                (priced, usage), status, http = self.no_usage, "upstream_error", 429
            else:
                pool = self.pools[model]
                (priced, usage), http = pool[int(s * 1_000_003) % len(pool)], 200
                status = "client_disconnected" if s < 0.025 else "ok"
            h = f"{(phase << 96) + i:032x}"
            sec, milli = divmod(in_day, 1000)
            mins, sec = divmod(sec, 60)
            hour, mins = divmod(mins, 60)
            at = f"{days[day]}T{hour:02d}:{mins:02d}:{sec:02d}{f'.{milli:03d}000' if milli else ''}Z"
            streamed = s > 0.4
            customer = customers[j] if u < 0.87 else ""  # end users (user_id) belong to customers
            out.append(
                f'{{"event_id":"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}","request_id":"req_{phase}_{i}",'
                f'{head},{key},{self.model_json[model]},{priced},"started_at":"{at}",'
                f'"latency_ms":{200 + (i * 37) % 4000}.0,"ttft_ms":{"180.0" if streamed else "null"},'
                f'"status":"{status}","http_status":{http},"streamed":{"true" if streamed else "false"},'
                f'"sandbox":{"true" if u < 0.02 else "false"},{usage},{prompt},'
                f'"feature_tags":{beta if s > 0.95 else "[]"},"tags":["{"env:prod" if s < 0.97 else "env:staging"}"],'
                f'"customer_id":"{customer}","feature":"{feature}",'
                f'"user_id":"{f"{customer}_u{int(u * 1e6) % USERS_PER_CUSTOMER}" if u > 0.6 and customer else ""}",'
                f'"kafka_topic":"{TOPIC}",'
                f'"kafka_partition":{i % 6},"kafka_offset":{i // 6 + phase * 100_000_000}}}\n'
            )
        return "".join(out).encode()

    @staticmethod
    def reference(line: bytes) -> bytes:
        """A row's call made again the pricer's way (UsageEvent -> PricedEvent -> rows.to_row),
        written by the store's row encoder as a JSONEachRow object (the pricer's own inserts
        carry the same values positionally, as JSONCompactEachRow)."""
        import msgspec

        from schemas.events import UsageEvent
        from services.pricer.pricing import Cost, PricedEvent
        from services.pricer.rows import to_row
        from services.store.base import encode_rows

        row = msgspec.json.decode(line)
        fields = {f: row[f] for f in UsageEvent.__struct_fields__ if f in row and f != "prompt_version"}
        fields["started_at"] = datetime.fromisoformat(row["started_at"].replace("Z", "+00:00"))
        event = UsageEvent(**fields, user=row["user_id"])
        cost = Cost(*(Decimal(row[f"{k}_cost"]) for k in ("input", "cache_read", "cache_write", "output")))
        priced = PricedEvent(event, cost, row["pricing_status"], row["priced_model"], row["price_source"])
        usage_row = to_row(priced, row["prompt_version"], row["kafka_topic"], row["kafka_partition"], row["kafka_offset"])
        return encode_rows([msgspec.structs.asdict(usage_row)])


async def create_org(store: Any, seed: int, dims: dict[str, int]) -> dict[str, Any]:
    """The organisation, its teams, keys and prompts (with versions), through the control
    plane's own functions. Independent calls go together: the store runs one statement at a
    time anyway, and is never idle between them."""
    from services.query import control

    rng = random.Random(seed)
    await control.bootstrap(store, None)
    org_id, admin_key = await control.create_org(store, "bench")
    n_teams = dims["teams"]
    teams = [t["id"] for t in await asyncio.gather(*(control.create_team(store, org_id, f"team-{t:02d}")
                                                     for t in range(n_teams)))]
    made = await asyncio.gather(*(control.create_key(store, org_id, f"key-{k:03d}", teams[k % n_teams], "member")
                                  for k in range(dims["keys"])))
    keys = [(k["id"], k["team_id"]) for k in made]
    models = [m[1] for m in MODELS]
    prompts = []
    for p in range(dims["prompts"]):
        versions = [{"version": 1, "model": rng.choice(models), "from_day": 0}]
        for v in range(2, 1 + rng.choice((1, 1, 2, 3))):
            versions.append({"version": v, "model": rng.choice(models), "from_day": rng.randrange(10, DAYS)})
        prompts.append({"prompt_key": f"prompt-{p:03d}", "team_id": teams[p % n_teams],
                        "feature": f"feature-{p % FEATURES:02d}", "versions": versions})

    async def register(p: dict[str, Any]) -> None:
        first, *later = p["versions"]
        await control.create_prompt(store, org_id, p["prompt_key"], "bench prompt", {"model": first["model"]})
        for v in later:  # numbered in order of creation
            await control.add_version(store, org_id, p["prompt_key"], {"model": v["model"]}, True)
        p["versions"].sort(key=lambda v: v["from_day"])

    await asyncio.gather(*(register(p) for p in prompts))
    first_day = datetime.now(timezone.utc).date() - timedelta(days=DAYS)
    return {"org_id": org_id, "admin_key": admin_key, "first_day": first_day.isoformat(), "keys": keys,
            "prompts": prompts, "dimensions": dims}


async def _settle(store: Any, limit_s: float = 300.0) -> float:
    """Wait (at most ``limit_s``) until the background merges that loading started are done."""
    t = time.perf_counter()
    quiet = 0
    while time.perf_counter() - t < limit_s and quiet < 3:
        running = (await store.select("SELECT count() AS n FROM system.merges"))[0]["n"]
        quiet = quiet + 1 if int(running) == 0 else 0
        await asyncio.sleep(0.5)
    return time.perf_counter() - t


async def load(data: Path, org_file: Path, target: int, dims: dict[str, int]) -> dict[str, Any]:
    """Add events to the bench organisation (made first if ``org_file`` does not exist) until it
    has ``target``."""
    from services.store.chdb_store import ChdbStore
    from services.store.migrations import migrate

    store = ChdbStore(data)
    try:
        await migrate(store)
        info: dict[str, Any] = {}
        if not org_file.exists():
            t = time.perf_counter()
            org_file.write_text(json.dumps(await create_org(store, 5, dims)))
            info["control_plane_s"] = round(time.perf_counter() - t, 1)
        org = json.loads(org_file.read_text())
        count = "SELECT count() AS n FROM usage_events WHERE org_id = {org:String}"
        before = int((await store.select(count, {"org": org["org_id"]}))[0]["n"])
        n = target - before
        phase = org.setdefault("phases", 0) + 1  # each phase spans the 90 days; ids never repeat
        org_file.write_text(json.dumps({**org, "phases": phase}))
        population = Population(org, seed=phase)
        t = time.perf_counter()
        build_s = 0.0
        pending: asyncio.Task[None] | None = None
        for first in range(0, n, BATCH):
            b = time.perf_counter()
            rows = population.rows(first, min(BATCH, n - first), n, phase)
            for line in rows.splitlines(keepends=True)[::997]:
                assert line == population.reference(line), (line, population.reference(line))
            build_s += time.perf_counter() - b
            if pending is not None:
                await pending
            # built while the store inserts the previous batch on its own thread
            pending = asyncio.create_task(store.insert("usage_events", rows, dedup_token=f"bench:{phase}:{first}"))
            await asyncio.sleep(0)
        if pending is not None:
            await pending
        load_s = time.perf_counter() - t
        settle_s = await _settle(store)
        stored = int((await store.select(count, {"org": org["org_id"]}))[0]["n"])
        tables = await store.select(
            "SELECT table, sum(rows) AS rows, count() AS parts FROM system.parts WHERE active AND database = currentDatabase()"
            " AND (table = 'usage_events' OR startsWith(table, 'spend_daily') OR table = 'billing_items_daily')"
            " GROUP BY table ORDER BY table")
        prompt = await store.select(
            "SELECT prompt_key FROM spend_daily_by_prompt WHERE org_id = {org:String} GROUP BY prompt_key"
            " ORDER BY sum(request_count) DESC, prompt_key LIMIT 1", {"org": org["org_id"]})
        customer = await store.select(
            "SELECT customer_id FROM spend_daily_by_customer WHERE org_id = {org:String} AND customer_id != ''"
            " GROUP BY customer_id ORDER BY sum(request_count) DESC, customer_id LIMIT 1", {"org": org["org_id"]})
        return {
            **info, "events": stored, "added": n, "load_s": round(load_s, 1), "build_s": round(build_s, 1),
            "events_per_s": round(n / load_s), "settle_s": round(settle_s, 1),
            "tables": {r["table"]: {"rows": int(r["rows"]), "parts": int(r["parts"])} for r in tables},
            "prompt_key": prompt[0]["prompt_key"], "customer_id": customer[0]["customer_id"],
            "last_day": (date.fromisoformat(org["first_day"]) + timedelta(days=DAYS - 1)).isoformat(),
        }
    finally:
        await store.close()


# -- measuring (this process: HTTP only) ----------------------------------------------------


def endpoints(info: dict[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    """Every aggregation read, each over the last 30 and the last 90 days; first the floor: an
    authenticated request that reads nothing (``FLOOR``, not held to the targets)."""
    last = date.fromisoformat(info["last_day"])
    out = [(FLOOR, "/api/auth/whoami", {})]
    for days in (30, 90):
        s, e = (last - timedelta(days=days - 1)).isoformat(), last.isoformat()
        w = {"start": s, "end": e}
        d = {"start_date": s, "end_date": e}
        b = {"startDate": s, "endDate": e}
        out += [
            (f"aggregations/monthly {days}d", "/api/aggregations/monthly", w),
            (f"aggregations/by-team {days}d", "/api/aggregations/by-team", w),
            (f"aggregations/by-prompt {days}d", "/api/aggregations/by-prompt", w),
            (f"aggregations/version-comparison {days}d", "/api/aggregations/version-comparison",
             {**w, "prompt_key": info["prompt_key"]}),
            (f"aggregations/by-key {days}d", "/api/aggregations/by-key", w),
            (f"aggregations/by-tag {days}d", "/api/aggregations/by-tag", w),
            (f"aggregations/daily {days}d", "/api/aggregations/daily", w),
            (f"spend/tags {days}d", "/spend/tags", d),
            (f"spend/logs summary {days}d", "/spend/logs", d),
            (f"billing/usage-analytics {days}d", "/api/v1/billing/usage-analytics", b),
            (f"customers {days}d", "/api/customers", w),
            (f"customers/{{id}} {days}d", f"/api/customers/{info['customer_id']}", w),
            (f"features {days}d", "/api/features", w),
            (f"features/by-customer {days}d", "/api/features/by-customer", w),
        ]
    return out


def measure(sizes: dict[str, tuple[str, dict[str, Any]]], requests: int, budget_s: float) -> dict[str, dict[str, Any]]:
    """Sequential requests in rounds against every size's ``meterline query`` at once (``sizes``:
    URL and load info by size). A round asks each endpoint of every size, the sizes' requests
    back to back and which size goes first alternating by round: the sizes are measured side by
    side, so a slow spell of this shared machine lands on both and their ratio holds. Within a
    round the endpoints follow one another, so a burst of load from elsewhere spreads over all of
    them instead of landing on one. An endpoint whose requests (all sizes together) have used up
    ``budget_s`` per size drops out of later rounds (5 requests at least)."""
    todo = {size: endpoints(info) for size, (_, info) in sizes.items()}
    names = [name for name, _, _ in next(iter(todo.values()))]
    times: dict[str, dict[str, list[float]]] = {size: {name: [] for name in names} for size in sizes}
    nbytes: dict[str, dict[str, int]] = {size: {} for size in sizes}
    spent = dict.fromkeys(names, 0.0)
    clients = {size: httpx.Client(base_url=url, headers={"authorization": f"Bearer {info['admin_key']}"}, timeout=120)
               for size, (url, info) in sizes.items()}
    try:
        for k in range(WARMUP + requests):
            order = list(sizes) if k % 2 == 0 else list(sizes)[::-1]
            for i, name in enumerate(names):
                if k > WARMUP + 4 and spent[name] > budget_s * len(sizes):
                    continue
                for size in order:
                    _, path, params = todo[size][i]
                    t = time.perf_counter()
                    r = clients[size].get(path, params=params)
                    elapsed = time.perf_counter() - t
                    if r.status_code != 200:
                        raise RuntimeError(f"{path} {params} at {size} events: {r.status_code} {r.text[:300]}")
                    nbytes[size][name] = len(r.content)
                    spent[name] += elapsed
                    if k >= WARMUP:
                        times[size][name].append(elapsed * 1000)
    finally:
        for client in clients.values():
            client.close()
    return {size: {name: {"p50_ms": round(percentile(ts, 0.5), 1), "p95_ms": round(percentile(ts, 0.95), 1), "requests": len(ts),
                          "response_bytes": nbytes[size][name]} for name, ts in by_name.items()}
            for size, by_name in times.items()}


class QueryServer:
    """``meterline query`` on a data directory, as a child process."""

    def __init__(self, data: Path, log: Path) -> None:
        from services.common.broker import free_port

        self.port = free_port()
        env = {**os.environ, "METERLINE_CLICKHOUSE_URL": f"chdb://{data.resolve()}",
               "METERLINE_QUERY_PORT": str(self.port), "METERLINE_LOG_LEVEL": "warning",
               "METERLINE_DATA_DIR": str(data.parent.resolve())}
        self._log = log.open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "services.cli", "query"], cwd=ROOT, env=env,
                                        stdout=self._log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the query service exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the query service did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def grow(work: Path, target: int, quick: bool) -> dict[str, Any]:
    """Bring the organisation in ``work`` to ``target`` events (a loader process)."""
    data, org_file = work / "clickhouse", work / "org.json"
    t = time.perf_counter()
    loader = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--load", str(data), "--org", str(org_file),
         "--events", str(target), *(["--quick"] if quick else [])], cwd=ROOT, capture_output=True, text=True, check=False)
    if loader.returncode != 0:
        raise RuntimeError(f"loading to {target:,} events failed:\n{loader.stderr[-3000:]}")
    info = json.loads(loader.stdout.strip().splitlines()[-1])
    assert info["events"] == target, (info["events"], target)
    info["loader_process_s"] = round(time.perf_counter() - t, 1)
    return info


def run(quick: bool, sizes: tuple[int, int] | None = None) -> dict[str, Any]:
    small, large = sizes or SIZES[quick]
    with tempfile.TemporaryDirectory(prefix="meterline-bench-queries-") as tmp:
        # One organisation grown from the small size to the large one, in a copy: the large
        # figures are those of a table holding the large number of events, over the same control
        # plane, and both stay on disk to be measured side by side.
        dirs = {str(small): Path(tmp) / "small", str(large): Path(tmp) / "large"}
        dirs[str(small)].mkdir()
        infos = {str(small): grow(dirs[str(small)], small, quick)}
        shutil.copytree(dirs[str(small)], dirs[str(large)], symlinks=True)  # chDB's links are relative
        infos[str(large)] = grow(dirs[str(large)], large, quick)
        servers: dict[str, QueryServer] = {}
        try:
            for size, work in dirs.items():
                t = time.perf_counter()
                servers[size] = QueryServer(work / "clickhouse", work / "query.log")
                servers[size].wait_ready()
                infos[size]["server_start_s"] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            admin_key = json.loads((dirs[str(small)] / "org.json").read_text())["admin_key"]
            measured = measure({size: (servers[size].url, {**infos[size], "admin_key": admin_key}) for size in dirs},
                               REQUESTS[quick], BUDGET_S[quick])
            for size in dirs:
                infos[size]["endpoints"] = measured[size]
                infos[size]["measure_s"] = round(time.perf_counter() - t, 1)  # both sizes together
        finally:
            for server in servers.values():
                server.stop()
    return assess({
        "quick": quick, "small": small, "large": large,
        "dimensions": {**DIMENSIONS[quick], "days": DAYS, "features": FEATURES, "users_per_customer": USERS_PER_CUSTOMER},
        "targets": {"p95_ms_at_large": P95_TARGET_MS, "large_over_small_p50": RATIO_TARGET},
        "sizes": infos,
    })


def assess(results: dict[str, Any]) -> dict[str, Any]:
    """Ratios and misses. The ratio target is judged on p50: it asks whether reads grow with the
    number of events, and p95 over 50 requests on a shared 2-core machine is mostly scheduling
    noise (the floor's p95 ratio shows how much). Both ratios are reported."""
    a = results["sizes"][str(results["small"])]["endpoints"]
    b = results["sizes"][str(results["large"])]["endpoints"]
    ratios, misses = {}, []
    for name in b:
        ratio = {"p50": round(b[name]["p50_ms"] / a[name]["p50_ms"], 2), "p95": round(b[name]["p95_ms"] / a[name]["p95_ms"], 2)}
        ratios[name] = ratio
        if name == FLOOR:
            continue
        why = []
        if b[name]["p95_ms"] > P95_TARGET_MS:
            why.append(f"p95 {b[name]['p95_ms']} ms > {P95_TARGET_MS:g} ms")
        if ratio["p50"] > RATIO_TARGET:
            why.append(f"p50 ratio {ratio['p50']} > {RATIO_TARGET}")
        if why:
            misses.append({"endpoint": name, "why": "; ".join(why)})
    return {**results, "ratios": ratios, "misses": misses}


def table(results: dict[str, Any]) -> str:
    small, large = str(results["small"]), str(results["large"])
    a, b = results["sizes"][small], results["sizes"][large]
    missed = {m["endpoint"] for m in results["misses"]}
    lines = [(f"query latency over HTTP, {int(small):,} vs {int(large):,} events"
              f" (targets: p95 <= {results['targets']['p95_ms_at_large']:g} ms at {int(large):,},"
              f" p50 ratio <= {results['targets']['large_over_small_p50']})")]
    for size, s in ((small, a), (large, b)):
        tables = ", ".join(f"{t} {v['rows']:,} rows/{v['parts']} parts" for t, v in s["tables"].items())
        lines.append(f"  {int(size):>11,} events: loaded in {s['load_s']}s ({s['events_per_s']:,}/s),"
                     f" merges settled in {s['settle_s']}s; {tables}")
    ea, eb = a["endpoints"], b["endpoints"]
    w = max(len(n) for n in eb) + 2
    # "x size": how much larger the answer is at the large size; an answer that grows with the
    # data (one entry per user and day, say) costs more to read and write, whatever the rollups
    lines.append(f"{'endpoint':<{w}} {'p50 small':>9} {'p95 small':>9} {'p50 large':>9} {'p95 large':>9}"
                 f" {'x p50':>6} {'x p95':>6} {'x size':>6} {'MB large':>8}")
    for name in eb:
        r = results["ratios"][name]
        size_a, size_b = ea[name].get("response_bytes"), eb[name].get("response_bytes")
        grows = f"{size_b / size_a:>6.2f} {size_b / 1e6:>8.2f}" if size_a and size_b else f"{'':>6} {'':>8}"
        lines.append(f"{name:<{w}} {ea[name]['p50_ms']:>9.1f} {ea[name]['p95_ms']:>9.1f}"
                     f" {eb[name]['p50_ms']:>9.1f} {eb[name]['p95_ms']:>9.1f}"
                     f" {r['p50']:>6.2f} {r['p95']:>6.2f} {grows}{'  MISS' if name in missed else ''}")
    lines.append(f"{len(missed)} of {len(eb) - 1} miss a target" if missed else "every endpoint meets both targets")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", help="two sizes instead of the defaults, e.g. 100000,1000000")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "queries.json")
    parser.add_argument("--table", type=Path, help="print the table of a results file (assessed again) and exit")
    parser.add_argument("--load", type=Path, help=argparse.SUPPRESS)  # the loader process
    parser.add_argument("--org", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--events", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        from services.cli import _tune_gc
        from services.common.logging import configure

        configure("warning", False)
        _tune_gc()
        print(json.dumps(asyncio.run(load(args.load, args.org, args.events, DIMENSIONS[args.quick]))))
        return
    if args.table:
        saved = json.loads(args.table.read_text())
        saved["targets"] = {"p95_ms_at_large": P95_TARGET_MS, "large_over_small_p50": RATIO_TARGET}
        print(table(assess(saved)))
        return
    sizes = tuple(int(n) for n in args.sizes.split(",")) if args.sizes else None
    results = run(args.quick, sizes)  # type: ignore[arg-type]
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
