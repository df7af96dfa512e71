"""A private Redis Cluster (3 masters) and a Sentinel setup (master, replica, sentinel) as real processes."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import redis

from tests.procs import GatewayNode, Proc, RedisServer, WorkerProcess, free_port, port_open, scaled, wait_until

MASTER_NAME = "chatmaster"
FAST = {"CHAT_LEASE_SECONDS": "2", "CHAT_VISIBILITY_TIMEOUT": "3", "CHAT_LOG_FORMAT": "text"}


@dataclass
class ChatNodes:
    """Two gateway processes and a worker process sharing one Redis deployment."""

    a: GatewayNode
    b: GatewayNode
    worker: WorkerProcess


@contextlib.contextmanager
def chat_nodes(redis_url: str, prefix: str) -> Iterator[ChatNodes]:
    """Start gateway nodes "a" and "b" and a worker on ``redis_url``; they must exit 0 when stopped."""
    env = {"CHAT_REDIS_PREFIX": prefix, **FAST}
    procs: list[Proc] = []
    try:
        procs.append(GatewayNode(redis_url, "a", **env))
        procs.append(GatewayNode(redis_url, "b", **env))
        procs.append(WorkerProcess(redis_url, "worker", **env))
        a, b, worker = procs
        assert isinstance(a, GatewayNode)
        assert isinstance(b, GatewayNode)
        assert isinstance(worker, WorkerProcess)
        yield ChatNodes(a, b, worker)
    finally:
        codes = [proc.terminate() for proc in procs]
        for proc in procs:
            print(proc.log()[-3000:])  # shown when a test fails
        assert codes == [0] * len(procs)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@dataclass
class ClusterSetup:
    """Three masters without replicas, every slot covered."""

    servers: list[RedisServer]

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{server.port}" for server in self.servers[:2])
        return f"redis+cluster://{seeds}"

    def client(self, port: int | None = None) -> redis.Redis:
        """A plain client of one node (the first by default): for CLUSTER and PUBSUB commands."""
        return redis.Redis(port=port or self.servers[0].port)

    def owner(self, key: str) -> int:
        """Port of the master that owns ``key``'s slot now."""
        with self.client() as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise AssertionError(f"slot of {key} is not served")

    def node_ids(self) -> dict[int, str]:
        """Port -> cluster node id of every master."""
        with self.client() as client:
            lines = client.execute_command("CLUSTER", "NODES").decode().splitlines()
        return {int(line.split()[1].split("@")[0].rsplit(":", 1)[1]): line.split()[0] for line in lines}

    def move_slot(self, key: str, to_port: int) -> None:
        """Migrate ``key``'s slot (and its keys) to the master on ``to_port``, as resharding does."""
        source_port, ids = self.owner(key), self.node_ids()
        with self.client(source_port) as source, self.client(to_port) as target:
            slot = int(source.execute_command("CLUSTER", "KEYSLOT", key))
            target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source_port])
            source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to_port])
            for _ in range(1000):  # bounded: a test room holds a handful of keys
                names = source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
                if not names:
                    break
                source.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *names)
            for node in (target, source):
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[to_port])
        for server in self.servers:
            with self.client(server.port) as client:
                wait_until(lambda c=client: self._owner_seen(c, slot, to_port), 10, f"slot {slot} moved")

    @staticmethod
    def _owner_seen(client: redis.Redis, slot: int, port: int) -> bool:
        return any(s <= slot <= e and int(m[1]) == port for s, e, m, *_ in client.execute_command("CLUSTER", "SLOTS"))

    def shard_subscribers(self, port: int, channel: str) -> int:
        """PUBSUB SHARDNUMSUB of ``channel`` on the master on ``port``."""
        with self.client(port) as client:
            _, count = client.execute_command("PUBSUB", "SHARDNUMSUB", channel)
        return int(count)


def _cluster_ok(port: int) -> bool:
    with redis.Redis(port=port) as client:
        info = client.execute_command("CLUSTER", "INFO").decode()
    return "cluster_state:ok" in info


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[ClusterSetup]:
    """Three cluster-enabled redis-servers joined by ``redis-cli --cluster create``."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise RuntimeError("redis-cli is not on PATH (apt-get install -y redis-tools)")
    options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"]
    servers: list[RedisServer] = []
    try:
        for _ in range(3):
            # the bus port defaults to port + 10000, which may be taken or out of range
            extra = [*options, "--cluster-port", str(free_port())]
            servers.append(RedisServer(extra=extra, workdir=Path(tempfile.mkdtemp(prefix="redis-cluster-"))))
        nodes = [f"127.0.0.1:{server.port}" for server in servers]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=scaled(30),
        )
        for server in servers:
            wait_until(lambda port=server.port: _cluster_ok(port), 20, f"cluster_state:ok on {server.port}", 0.1)
        yield ClusterSetup(servers)
    finally:
        for server in servers:
            server.terminate()


@dataclass
class SentinelSetup:
    """A master, its replica and one sentinel watching them (quorum 1)."""

    master: RedisServer
    replica: RedisServer
    sentinel: Proc
    sentinel_port: int

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{MASTER_NAME}"

    def sentinel_client(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel_port, decode_responses=True)

    def master_port(self) -> int:
        """The master's port as the sentinel reports it now."""
        with self.sentinel_client() as client:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return int(port)

    def wait_replicated(self) -> None:
        """Return once the replica acknowledged every write the master took so far."""
        with redis.Redis(port=self.master_port()) as master:
            assert master.execute_command("WAIT", 1, int(scaled(5) * 1000)) == 1

    def replica_ready(self) -> bool:
        """The sentinel knows a replica that is in sync and could be promoted."""
        with self.sentinel_client() as client:
            replicas = client.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)
        for replica in replicas:
            fields = replica if isinstance(replica, dict) else dict(zip(replica[::2], replica[1::2], strict=True))
            if fields.get("master-link-status") == "ok" and "down" not in fields.get("flags", ""):
                return True
        return False


@pytest.fixture
def redis_sentinel() -> Iterator[SentinelSetup]:
    """A fresh master + replica + sentinel for each test: failover tests change who is master."""
    master = RedisServer()
    procs: list[Proc] = [master]
    try:
        replica = RedisServer(extra=["--replicaof", "127.0.0.1", str(master.port)])
        procs.append(replica)
        workdir = Path(tempfile.mkdtemp(prefix="redis-sentinel-"))
        port = free_port()
        conf = workdir / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 1\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
            f"sentinel failover-timeout {MASTER_NAME} 10000\n"
        )
        binary = shutil.which("redis-server")
        assert binary is not None
        sentinel = Proc([binary, str(conf), "--sentinel"], name=f"sentinel-{port}")
        procs.append(sentinel)
        wait_until(lambda: port_open(port) or not sentinel.alive(), 10, f"sentinel on {port}")
        setup = SentinelSetup(master, replica, sentinel, port)
        wait_until(setup.replica_ready, 30, "the sentinel to see an in-sync replica", 0.2)
        yield setup
    finally:
        for proc in reversed(procs):
            proc.terminate()
