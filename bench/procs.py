"""Child processes of the benchmark and what the kernel says about them.

Servers are started as children and stopped by PID. Their CPU time and resident memory are read
from /proc (utime+stime in /proc/PID/stat, VmRSS in /proc/PID/status), summed over the process and
its live descendants so a server that forks helpers is charged for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to the hard limit; return the new soft limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    """A TCP port nobody listens on right now on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``predicate`` until it is true; raise TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def _tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (through /proc/PID/task/*/children)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(p) for p in f.read().split())
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its live descendants."""
    total = 0
    for each in _tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{each}/stat") as f:
            # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
            fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent on anything but idling and waiting, since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def listen_overflows() -> int:
    """Times since boot that a listening socket's accept queue was full and a new connection had to wait.

    The kernel's TcpExt ListenOverflows counter (/proc/net/netstat), for the whole machine: a client
    whose handshake lands on a full queue retries after a second or more.
    """
    with open("/proc/net/netstat") as f:
        lines = [line.split() for line in f if line.startswith("TcpExt:")]
    names, values = lines[0], lines[1]
    return int(values[names.index("ListenOverflows")])


def rss_bytes(pid: int) -> int:
    """Resident memory (VmRSS) of ``pid`` and its live descendants, in bytes."""
    total = 0
    for each in _tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{each}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


async def redis_calls(port: int, host: str = "127.0.0.1") -> dict[str, int]:
    """Command name -> calls so far, from the redis-server's ``INFO commandstats``.

    Commands a script runs (``redis.call`` inside EVALSHA) are counted under their own names too.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        header = await reader.readline()
        if not header.startswith(b"$"):
            raise RuntimeError(f"INFO commandstats: unexpected answer {header!r}")
        body = (await reader.readexactly(int(header[1:]) + 2)).decode()
    finally:
        writer.close()
        await writer.wait_closed()
    calls = {}
    for line in body.splitlines():
        # cmdstat_publish:calls=12,usec=40,usec_per_call=3.33,rejected_calls=0,failed_calls=0
        if line.startswith("cmdstat_"):
            name, _, stats = line[len("cmdstat_") :].partition(":")
            calls[name] = int(stats.split(",", 1)[0].removeprefix("calls="))
    return calls


class Proc:
    """A child process with its output in a temp log; stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, args: list[str], *, name: str, env: Mapping[str, str] | None = None, cwd: Path = ROOT):
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            args, env=dict(env) if env is not None else None, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_port(self, port: int, timeout: float = 30) -> None:
        """Return once ``port`` accepts connections; raise with the log tail if the process dies first."""
        wait_until(lambda: port_open(port) or not self.alive(), timeout, f"{self.name} on port {port}")
        if not self.alive():
            raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; remove the log."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        self._log.close()
        self.log_path.unlink(missing_ok=True)


class RedisServer(Proc):
    """A private redis-server on a free loopback port, without persistence."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (apt-get install -y redis-server)")
        self.port = free_port()
        self.workdir = tempfile.mkdtemp(prefix="bench-redis-")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", self.workdir, "--maxclients", "10000"]
        super().__init__(args, name=f"redis-{self.port}")
        self.wait_port(self.port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self, timeout: float = 10) -> None:
        super().stop(timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)
