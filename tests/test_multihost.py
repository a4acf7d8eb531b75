"""Several hosts on one machine: broker, two worker pools and a client in network namespaces.

Each "host" is a network namespace of its own, joined to the broker's namespace by a veth
pair on a private /30 of 10.77.0.0/24 (nothing outside the namespaces this test creates is
touched).  Traffic uses CURVE keys, one worker key per host.  Mid-job the link of host 1 is
cut: the broker declares its workers dead, their tasks (and the results they held) move to
host 2, and the job completes with every value right; when the link is back, host 1's
workers register again.

Needs root, ``ip`` and network namespaces; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import zmq

from zmqdask.security import create_keys

REPO = Path(__file__).resolve().parent.parent
IP_TIMEOUT_S = 10.0
"""Longest one ``ip`` command may take."""
START_TIMEOUT_S = 60.0
"""Longest the daemons and the client may take to start and find each other."""
LIVENESS_MARGIN_S = 30.0
"""Longest the broker may take to declare the cut host dead (its liveness timeout is 5 s)."""
JOB_TIMEOUT_S = 90.0
"""Longest the job may take after the cut."""
REJOIN_TIMEOUT_S = 45.0
"""Longest host 1's workers may take to register again once its link is back."""
STOP_GRACE_S = 5.0
NTASKS = 240
TASK_S = 0.04
WORKERS_PER_HOST = 2
PREFIX = f"zdt{os.getpid() % 100000}"
"""Namespace name prefix, unique per test process."""

# Each namespace's link to the broker namespace: (name in the broker ns, broker side, peer side).
LINKS = {
    "client": ("b-c", "10.77.0.1", "10.77.0.2"),
    "h1": ("b-h1", "10.77.0.5", "10.77.0.6"),
    "h2": ("b-h2", "10.77.0.9", "10.77.0.10"),
}

CLIENT_SCRIPT = textwrap.dedent(
    """
    import os, sys, threading, time
    from zmqdask import Client, as_completed

    address, keys = sys.argv[1], sys.argv[2]
    ntasks, task_s, nworkers = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])

    def work(i):
        time.sleep(task_s)
        return i * i, os.environ.get("ZD_HOST", "?")

    def say(*words):
        print(*words, flush=True)

    def hosts(client):
        return ",".join(sorted({d["name"].split("-")[0] for d in client.scheduler_info()["workers"].values()}))

    with Client(address, security=keys, timeout=30) as client:
        client.wait_for_workers(nworkers, timeout=60)
        say("hosts", hosts(client))
        stop = threading.Event()

        def watch():
            seen = None
            while not stop.wait(0.2):
                now = hosts(client)
                if now != seen:
                    say("hosts", now)
                    seen = now

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        futures = client.map(work, range(ntasks))
        for count, _ in enumerate(as_completed(futures), 1):
            if count == ntasks // 4:
                say("quarter")
        results = client.gather(futures)
        values_ok = [value for value, _ in results] == [i * i for i in range(ntasks)]
        ran_on = {host: sum(1 for _, h in results if h == host) for host in ("h1", "h2")}
        say("result", "ok" if values_ok else "WRONG", ran_on["h1"], ran_on["h2"])
        sys.stdin.readline()  # the test restores the link, then says so
        deadline = time.monotonic() + float(os.environ["REJOIN_TIMEOUT_S"])
        while hosts(client) != "h1,h2" and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        watcher.join()
        say("rejoined", hosts(client), len(client.scheduler_info()["workers"]))
    """
)


def ip(*args: str) -> None:
    """Run one ``ip`` command; raise with its error output if it fails."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def namespaces_unavailable() -> str | None:
    """Why this machine cannot run the test, or None if it can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if not zmq.has("curve"):
        return "libzmq was built without CURVE"
    probe = f"{PREFIX}probe"
    try:
        ip("netns", "add", probe)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace here: {exc}"
    try:
        ip("netns", "del", probe)
    except (RuntimeError, OSError, subprocess.TimeoutExpired):
        pass
    return None


class Process:
    """A command run inside a namespace, in its own process group, output in a log file."""

    def __init__(
        self, namespace: str, argv: list[str], log_path: Path, env: dict[str, str], pipes: bool = False
    ) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")  # closed in stop()
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *argv],
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else self._log,
            stderr=self._log,
            env=env,
            cwd=str(REPO),
            start_new_session=True,
        )
        self._buffer = b""
        self.lines: list[str] = []

    def read_until(self, prefix: str, timeout_s: float) -> str:
        """Collect stdout lines until one starts with ``prefix``; returns that line."""
        stream = self.process.stdout
        assert stream is not None
        for line in self.lines:
            if line.startswith(prefix):
                return line
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(stream, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(timeout=0.1):
                    if self.process.poll() is not None:
                        break
                    continue
                chunk = os.read(stream.fileno(), 4096)
                if not chunk:
                    break
                self._buffer += chunk
                *complete, self._buffer = self._buffer.split(b"\n")
                for raw in complete:
                    line = raw.decode(errors="replace").strip()
                    self.lines.append(line)
                    if line.startswith(prefix):
                        return line
        raise AssertionError(f"no line starting with {prefix!r} within {timeout_s} s; got {self.lines}")

    def say(self, line: str) -> None:
        """Write one line to the process's stdin."""
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the whole group; reap and close everything."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, 9)  # the pool's fork server and workers
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait(STOP_GRACE_S)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self._log.close()

    def log(self) -> str:
        """The process's stderr (and stdout when not piped) so far."""
        return self.log_path.read_text(errors="replace")


class Hosts:
    """The namespaces and veth links of the test, removed by :meth:`close`."""

    def __init__(self) -> None:
        self.broker = f"{PREFIX}b"
        self.names = {name: f"{PREFIX}{name}" for name in LINKS}
        self.created: list[str] = []

    def build(self) -> None:
        for namespace in (self.broker, *self.names.values()):
            ip("netns", "add", namespace)
            self.created.append(namespace)
            ip("-n", namespace, "link", "set", "lo", "up")
        for name, (broker_side, broker_ip, peer_ip) in LINKS.items():
            peer = self.names[name]
            ip("link", "add", broker_side, "netns", self.broker, "type", "veth", "peer", "name", "eth0", "netns", peer)
            ip("-n", self.broker, "addr", "add", f"{broker_ip}/30", "dev", broker_side)
            ip("-n", peer, "addr", "add", f"{peer_ip}/30", "dev", "eth0")
            ip("-n", self.broker, "link", "set", broker_side, "up")
            ip("-n", peer, "link", "set", "eth0", "up")

    def set_link(self, name: str, up: bool) -> None:
        """Cut (or restore) the link between host ``name`` and the broker."""
        ip("-n", self.broker, "link", "set", LINKS[name][0], "up" if up else "down")

    def close(self) -> None:
        # Deleting a namespace also deletes the veth ends inside it (and so their peers).
        for namespace in reversed(self.created):
            try:
                ip("netns", "del", namespace)
            except (RuntimeError, OSError, subprocess.TimeoutExpired):
                pass


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    reason = namespaces_unavailable()
    if reason is not None:
        pytest.skip(reason)
    network = Hosts()
    try:
        network.build()
        yield network
    finally:
        network.close()


def child_env(**extra: str) -> dict[str, str]:
    """Our environment and import path, plus ``ZMQDASK_PARENT_PID`` so daemons stop if we die."""
    paths = [str(REPO)] + [os.path.abspath(p) for p in sys.path if p]
    env = dict(os.environ, ZMQDASK_PARENT_PID=str(os.getpid()), **extra)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cut_host_loses_its_work_to_the_other_and_rejoins(hosts: Hosts, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    create_keys(keys, clients=1, workers=2)
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    processes: list[Process] = []
    try:
        broker = Process(
            hosts.broker,
            [sys.executable, "-m", "broker", "--host", "0.0.0.0", "--port", "0", "--curve-keys", str(keys)],
            tmp_path / "broker.log",
            child_env(),
            pipes=True,
        )
        processes.append(broker)
        port = broker.read_until("zmqdask-broker listening on ", START_TIMEOUT_S).rsplit(":", 1)[1]
        for index, name in enumerate(("h1", "h2"), 1):
            processes.append(
                Process(
                    hosts.names[name],
                    [
                        sys.executable,
                        "-m",
                        "zmqdask.pool",
                        f"tcp://{LINKS[name][1]}:{port}",
                        "--nworkers",
                        str(WORKERS_PER_HOST),
                        "--name",
                        name,
                        "--curve-keys",
                        str(keys),
                        "--key",
                        str(keys / "workers" / f"worker-{index}.key_secret"),
                        "--death-timeout",
                        "240",
                    ],
                    tmp_path / f"pool-{name}.log",
                    child_env(ZD_HOST=name),
                )
            )
        client = Process(
            hosts.names["client"],
            [
                sys.executable,
                str(script),
                f"tcp://{LINKS['client'][1]}:{port}",
                str(keys),
                str(NTASKS),
                str(TASK_S),
                str(2 * WORKERS_PER_HOST),
            ],
            tmp_path / "client.log",
            child_env(REJOIN_TIMEOUT_S=str(REJOIN_TIMEOUT_S)),
            pipes=True,
        )
        processes.append(client)

        try:
            assert client.read_until("hosts", START_TIMEOUT_S) == "hosts h1,h2"
            client.read_until("quarter", JOB_TIMEOUT_S)
            hosts.set_link("h1", up=False)
            client.read_until("hosts h2", LIVENESS_MARGIN_S)  # the broker declared host 1 dead
            _, values, on_h1, on_h2 = client.read_until("result", JOB_TIMEOUT_S).split()
            # Every value is right.  Host 1 stayed cut off until now, so everything it had not
            # finished (its running and prefetched tasks, and the results it held, which were
            # lost with it) was computed by host 2.
            assert values == "ok"
            assert int(on_h1) + int(on_h2) == NTASKS and int(on_h2) >= NTASKS - NTASKS // 4
            hosts.set_link("h1", up=True)
            client.say("rejoin")
            rejoined = client.read_until("rejoined", REJOIN_TIMEOUT_S + 10).split()
            assert rejoined == ["rejoined", "h1,h2", str(2 * WORKERS_PER_HOST)]
        except AssertionError as exc:
            logs = "\n".join(f"--- {p.log_path.name} ---\n{p.log()[-3000:]}" for p in processes)
            raise AssertionError(f"{exc}\n{logs}") from None
    finally:
        for process in reversed(processes):
            process.stop()
