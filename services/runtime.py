"""Wiring: starts the services, alone (production) or together (the embedded default).

Shutdown order matters for metering: stop taking calls, let in-flight calls finish, flush the
usage events they produced, then let the pricer write what it holds, then close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any

import structlog
import uvicorn

from services.common.broker import EmbeddedBroker
from services.common.kafka import ensure_topics
from services.common.settings import Settings
from services.gateway.app import create_app as create_gateway_app
from services.gateway.auth import GatewayAuth
from services.gateway.proxy import Proxy
from services.gateway.publisher import EventPublisher
from services.gateway.spool import Spool
from services.pricer.consumer import Pricer
from services.query import control
from services.query.app import create_app as create_query_app
from services.store import Store, open_store
from services.store.migrations import migrate

log = structlog.get_logger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: one process may host two servers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _shared_socket(host: str, port: int) -> socket.socket:
    """A listening socket that sibling worker processes bind too: the kernel spreads new
    connections across them (SO_REUSEPORT), with no accept lock and no master in the path."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class HttpServer:
    def __init__(self, app: Any, host: str, port: int, name: str, reuse_port: bool = False) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="off", http="httptools",
            timeout_graceful_shutdown=30, server_header=False,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None
        self._sockets = [_shared_socket(host, port)] if reuse_port else None
        self.name = name

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=self._sockets), name=self.name)
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the bind error, if any
                raise RuntimeError(f"{self.name} server exited during start-up")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests (streams included), then return."""
        self._server.should_exit = True
        if self._task is not None:
            await self._task


def _stop_on_signals(stop: asyncio.Event) -> None:
    """Ctrl-C, a stop, and a closed terminal all stop gracefully: in-flight calls finish, their
    events are flushed, and the embedded broker (in its own process group, so the terminal's
    signals do not reach it) is stopped last."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)


async def _prepared_store(settings: Settings) -> Store:
    store = open_store(settings.store)
    await migrate(store)
    return store


# -- the pieces ---------------------------------------------------------------------------


class GatewayPart:
    def __init__(self, settings: Settings, bootstrap: str) -> None:
        g = settings.gateway
        spool = Spool(g.spool_dir, g.spool_max_bytes)
        self.publisher = EventPublisher(
            bootstrap, settings.kafka.raw_topic, g.event_queue_size, spool, send_timeout_s=g.publish_timeout_s
        )
        self.auth = GatewayAuth(settings.gateway.query_url, settings.gateway.key_cache_ttl_s)
        self.proxy = Proxy(settings.gateway, self.auth, self.publisher)
        app = create_gateway_app(self.proxy, self.publisher)
        self.server = HttpServer(app, g.host, g.port, "gateway", reuse_port=g.worker_index is not None)

    async def start(self) -> None:
        await self.publisher.start()
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()
        await self.publisher.stop()
        await self.proxy.close()
        await self.auth.close()


class PricerPart:
    def __init__(self, settings: Settings, store: Store, bootstrap: str) -> None:
        self.pricer = Pricer(store, settings.kafka, settings.pricer, bootstrap)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.pricer.start()
        self.task = asyncio.create_task(self.pricer.run(), name="pricer")

    async def stop(self) -> None:
        self.pricer.stop()
        if self.task is not None:
            await self.task
        await self.pricer.close()


# -- entry points -------------------------------------------------------------------------


async def _wait(stop: asyncio.Event, *tasks: asyncio.Task[Any] | None) -> None:
    """Until a signal, or until a background part dies (which then stops the process)."""
    waiters = [asyncio.create_task(stop.wait())] + [t for t in tasks if t is not None]
    done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if task is not waiters[0] and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    waiters[0].cancel()


async def run_embedded(settings: Settings, announce: Any) -> None:
    stop = asyncio.Event()
    _stop_on_signals(stop)
    broker = None
    bootstrap = settings.kafka.bootstrap
    if bootstrap is None:
        broker = EmbeddedBroker.start()
        bootstrap = broker.bootstrap
    store: Store | None = None
    parts: list[Any] = []
    try:
        await ensure_topics(bootstrap, {settings.kafka.raw_topic: settings.kafka.partitions, settings.kafka.dlq_topic: 1})
        store = await _prepared_store(settings)
        boot = await control.bootstrap(store, settings.admin_key)
        query = HttpServer(create_query_app(store, settings.query), settings.query.host, settings.query.port, "query")
        await query.start()
        parts.append(query)
        pricer = PricerPart(settings, store, bootstrap)
        await pricer.start()
        parts.append(pricer)
        gateway = GatewayPart(settings, bootstrap)
        await gateway.start()
        parts.append(gateway)
        announce(settings, boot)
        await _wait(stop, pricer.task)
    finally:
        log.info("stopping")
        for part in reversed(parts):  # gateway first, query last
            await part.stop()
        if store is not None:
            await store.close()
        if broker is not None:
            broker.stop()
        log.info("stopped")


def _require_bootstrap(settings: Settings) -> str:
    if settings.kafka.bootstrap is None:
        raise SystemExit("METERLINE_KAFKA_BOOTSTRAP is required (host:port of your Kafka brokers)")
    return settings.kafka.bootstrap


async def run_gateway(settings: Settings) -> None:
    if settings.gateway.workers > 1:
        await _supervise_gateway_workers(settings)
        return
    stop = asyncio.Event()
    _stop_on_signals(stop)
    gateway = GatewayPart(settings, _require_bootstrap(settings))
    await gateway.start()
    log.info("gateway listening", port=settings.gateway.port)
    try:
        await _wait(stop)
    finally:
        await gateway.stop()


async def _supervise_gateway_workers(settings: Settings) -> None:
    """Run ``workers`` gateway processes on one port, one per core being the usual choice.
    Each is a complete gateway with its own spool directory (``worker-<i>``); one that dies is
    started again under the same index, so it replays what its predecessor spooled. A stop
    signal is passed on and waited for: each worker drains its calls and events first."""
    _require_bootstrap(settings)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    workers: dict[int, asyncio.subprocess.Process] = {}

    async def spawn(index: int) -> None:
        env = {**os.environ, "METERLINE_GATEWAY_WORKERS": "1", "METERLINE_GATEWAY_WORKER_INDEX": str(index)}
        workers[index] = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli", "gateway", env=env)

    for index in range(settings.gateway.workers):
        await spawn(index)
    log.info("gateway listening", port=settings.gateway.port, workers=settings.gateway.workers)
    try:
        while not stop.is_set():
            exits = {asyncio.ensure_future(p.wait()): i for i, p in workers.items()}
            stopping = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait([stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
            for waiter in [stopping, *exits]:
                if waiter not in done:
                    waiter.cancel()
            for waiter in done:
                if waiter is not stopping and not stop.is_set():
                    index = exits[waiter]
                    log.error("gateway worker exited; starting it again", worker=index, code=waiter.result())
                    await asyncio.sleep(1.0)  # no tight restart loop when a worker cannot start at all
                    await spawn(index)
    finally:
        for process in workers.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        await asyncio.gather(*(p.wait() for p in workers.values()))


async def run_pricer(settings: Settings) -> None:
    stop = asyncio.Event()
    _stop_on_signals(stop)
    bootstrap = _require_bootstrap(settings)
    await ensure_topics(bootstrap, {settings.kafka.raw_topic: settings.kafka.partitions, settings.kafka.dlq_topic: 1})
    store = await _prepared_store(settings)
    pricer = PricerPart(settings, store, bootstrap)
    await pricer.start()
    try:
        await _wait(stop, pricer.task)
    finally:
        await pricer.stop()
        await store.close()


async def run_query(settings: Settings, announce: Any) -> None:
    stop = asyncio.Event()
    _stop_on_signals(stop)
    store = await _prepared_store(settings)
    boot = await control.bootstrap(store, settings.admin_key)
    server = HttpServer(create_query_app(store, settings.query), settings.query.host, settings.query.port, "query")
    await server.start()
    announce(settings, boot)
    try:
        await _wait(stop)
    finally:
        await server.stop()
        await store.close()


async def run_migrate(settings: Settings) -> list[int]:
    store = open_store(settings.store)
    try:
        return await migrate(store)
    finally:
        await store.close()
