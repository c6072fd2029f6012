"""Wiring: starts the services, alone (production) or together (the embedded default: one
process for the pricer and the query API over the embedded store, the gateway in its own).

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
from services.common.coalescing import CoalescingHttpToolsProtocol
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
            # httptools' parser, with a response's writes leaving as one (see coalescing.py)
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="off", http=CoalescingHttpToolsProtocol,
            timeout_graceful_shutdown=30, server_header=False,
            # Nothing reads the client's address: no X-Forwarded-For rewriting on every call.
            proxy_headers=False,
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


# How much lower than the gateway the embedded default's own process runs (nice): the calls
# being metered come first, pricing catches up after. On a machine shared with the gateway, at
# nice 0 the pricer's flushes and the embedded ClickHouse's threads kept a waiting gateway off
# the CPU: p99 at concurrency 1 was 19 and 301 ms at nice 0 and 3.9 and 4.3 ms at nice 10, in
# alternating runs through `meterline up` (bench/gateway.py's set-up).
PIPELINE_NICE = 10


def _yield_cpu_to_the_gateway() -> None:
    """Lower this process's priority by PIPELINE_NICE. On Linux a priority belongs to a thread,
    so every thread that exists now is lowered; threads started later inherit it."""
    with contextlib.suppress(OSError, AttributeError):
        if sys.platform.startswith("linux"):
            for tid in os.listdir("/proc/self/task"):
                with contextlib.suppress(OSError):
                    current = os.getpriority(os.PRIO_PROCESS, int(tid))
                    os.setpriority(os.PRIO_PROCESS, int(tid), min(19, current + PIPELINE_NICE))
        else:
            os.nice(PIPELINE_NICE)


def _embedded_gateway_env(settings: Settings, bootstrap: str) -> dict[str, str]:
    """The gateway of the embedded default runs in processes of its own, as in production.
    In the pricer's process it waited whenever the pricer's loop or the embedded ClickHouse's
    threads held the process (a pricer flush is tens of ms of work): the calls in flight
    waited with it. It is told where everything the parent resolved is."""
    g = settings.gateway
    return {**os.environ, "METERLINE_KAFKA_BOOTSTRAP": bootstrap, "METERLINE_QUERY_URL": g.query_url,
            "METERLINE_HOST": g.host, "METERLINE_GATEWAY_PORT": str(g.port), "METERLINE_SPOOL_DIR": str(g.spool_dir)}


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
    gateway: GatewayProcesses | None = None
    try:
        await ensure_topics(bootstrap, {settings.kafka.raw_topic: settings.kafka.raw_partitions(), settings.kafka.dlq_topic: 1})
        gateway = GatewayProcesses(settings.gateway.workers, _embedded_gateway_env(settings, bootstrap),
                                   indexed=settings.gateway.workers > 1)
        await gateway.launch()  # before the priority drop below, which children would inherit
        _yield_cpu_to_the_gateway()
        store = await _prepared_store(settings)
        boot = await control.bootstrap(store, settings.admin_key)
        query = HttpServer(create_query_app(store, settings.query), settings.query.host, settings.query.port, "query")
        await query.start()
        parts.append(query)
        pricer = PricerPart(settings, store, bootstrap)
        await pricer.start()
        parts.append(pricer)
        await gateway.ready()
        announce(settings, boot)
        await _wait(stop, pricer.task, gateway.task)
    finally:
        log.info("stopping")
        if gateway is not None:  # first: its calls finish and their events are flushed
            await gateway.stop()
        for part in reversed(parts):  # then the pricer writes what it holds; the query API last
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
    _die_with_supervisor()
    gateway = GatewayPart(settings, _require_bootstrap(settings))
    await gateway.start()
    log.info("gateway listening", port=settings.gateway.port)
    _report_ready()
    try:
        await _wait(stop)
    finally:
        await gateway.stop()


async def _supervise_gateway_workers(settings: Settings) -> None:
    _require_bootstrap(settings)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    processes = GatewayProcesses(settings.gateway.workers, dict(os.environ), indexed=True)
    await processes.start()
    log.info("gateway listening", port=settings.gateway.port, workers=settings.gateway.workers)
    try:
        await _wait(stop, processes.task)
    finally:  # however the wait ends, the workers drain and stop before the supervisor exits
        await processes.stop()


class StartupError(RuntimeError):
    """A part of the stack could not start; its own log lines say why."""


# A supervisor that starts a gateway process passes it the write end of a pipe under this name;
# the gateway writes a line there once it listens.
READY_FD_ENV = "METERLINE_READY_FD"


def _die_with_supervisor() -> None:
    """A supervised gateway stops (SIGTERM: draining as usual) when its supervisor dies, even by
    SIGKILL, rather than hold the port with no pipeline behind it (Linux; elsewhere a no-op)."""
    if READY_FD_ENV not in os.environ or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() == 1:  # the supervisor was already gone before the line above
            os.kill(os.getpid(), signal.SIGTERM)


def _report_ready() -> None:
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is not None:
        with contextlib.suppress(OSError, ValueError):
            os.write(int(fd), b"ready\n")
            os.close(int(fd))


class GatewayProcesses:
    """``count`` gateway processes on one port, one per core being the usual choice, supervised.

    With ``indexed``, each is a worker with its own spool directory (``worker-<i>``) and the
    port shared (SO_REUSEPORT); one that dies is started again under the same index, so it
    replays what its predecessor spooled. ``start`` returns once every process listens (each
    reports it on a pipe; a port that answers could be someone else's). ``stop`` passes a stop
    signal on and waits: each process drains its calls and events first."""

    def __init__(self, count: int, env: dict[str, str], *, indexed: bool) -> None:
        self._count = count
        self._env = env
        self._indexed = indexed
        self._stop = asyncio.Event()
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._ready: list[asyncio.Future[None]] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.launch()
        await self.ready()

    async def launch(self) -> None:
        """Start the processes; ``ready`` waits until they listen."""
        self._ready = [await self._spawn(index) for index in range(self._count)]

    async def ready(self, timeout_s: float = 120.0) -> None:
        exits = [asyncio.ensure_future(p.wait()) for p in self._processes.values()]
        all_ready = asyncio.ensure_future(asyncio.gather(*self._ready))
        try:
            done, _ = await asyncio.wait([all_ready, *exits], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in exits:
                waiter.cancel()
        if all_ready not in done or all_ready.exception() is not None:
            all_ready.cancel()
            await self._terminate()
            raise StartupError("the gateway did not start: see its log lines above")
        self.task = asyncio.create_task(self._supervise(), name="gateway-processes")

    async def stop(self) -> None:
        self._stop.set()
        if self.task is not None:
            await self.task
        await self._terminate()

    async def _spawn(self, index: int) -> asyncio.Future[None]:
        """Start one gateway process; the future is done when it listens."""
        env = {**self._env, "METERLINE_GATEWAY_WORKERS": "1"}
        if self._indexed:
            env["METERLINE_GATEWAY_WORKER_INDEX"] = str(index)
        read_fd, write_fd = os.pipe()
        env[READY_FD_ENV] = str(write_fd)
        try:
            self._processes[index] = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.cli", "gateway", env=env, pass_fds=(write_fd,))
        finally:
            os.close(write_fd)
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            try:
                line = os.read(read_fd, 64)
            except OSError:
                line = b""
            loop.remove_reader(read_fd)
            os.close(read_fd)
            if ready.done():
                return
            if line.startswith(b"ready"):
                ready.set_result(None)
            else:  # the end of the pipe: the process exited before it listened
                ready.set_exception(RuntimeError(f"gateway process {index} exited before it listened"))

        loop.add_reader(read_fd, on_readable)
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # a restart's is not awaited
        return ready

    async def _supervise(self) -> None:
        while not self._stop.is_set():
            exits = {asyncio.ensure_future(p.wait()): i for i, p in self._processes.items()}
            stopping = asyncio.ensure_future(self._stop.wait())
            done, _ = await asyncio.wait([stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
            for waiter in [stopping, *exits]:
                if waiter not in done:
                    waiter.cancel()
            for waiter in done:
                if waiter is not stopping and not self._stop.is_set():
                    index = exits[waiter]
                    log.error("gateway process exited; starting it again", worker=index, code=waiter.result())
                    await asyncio.sleep(1.0)  # no tight restart loop when a process cannot start at all
                    await self._spawn(index)

    async def _terminate(self) -> None:
        for process in self._processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        await asyncio.gather(*(p.wait() for p in self._processes.values()))


async def run_pricer(settings: Settings) -> None:
    stop = asyncio.Event()
    _stop_on_signals(stop)
    bootstrap = _require_bootstrap(settings)
    await ensure_topics(bootstrap, {settings.kafka.raw_topic: settings.kafka.raw_partitions(), settings.kafka.dlq_topic: 1})
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
