"""Separate hosts on this one machine, for tests: network namespaces joined by a bridge of their own.

A test module asks for them with ``pytest_plugins = ["services", "hosts"]`` and the session
fixture ``hosts``: a ``Cluster`` whose ``.db`` host runs a PostgreSQL 15 cluster and an ``mlflow
server`` (``.storage_url(database)`` makes a database and gives its URL as the hosts reach it,
``.tracking_uri``) and whose ``.workers`` are three more hosts (``.worker("w2")``). The test
process itself has no interface on their network: it reads the database through the cluster's
socket (``.query``, ``.sessions_from(host)``) and asks anything else from a host
(``Host.python(code)``, a script run there that prints JSON). Each host is a network namespace (``ip netns add``) with ``lo`` up and one veth whose
peer is a port of a bridge in a namespace of its own, so the hosts reach each other on
``SUBNET`` and nothing else, and the root namespace gets no interface on that network. Commands
started with ``Host.start`` also get a UTS namespace with the host's name as hostname, so what
legoexp records as ``hostname:pid`` differs per host. ``Host.cut()`` / ``.reconnect()`` pull and
plug the host's cable at the bridge; ``Host.kill_all()`` SIGKILLs every process in it.

Names carry this process's pid (``lgx<pid>-db``), so two sessions never collide; the addresses
live only inside a session's own namespaces, so they cannot clash either. Everything is removed at
the end of the session, also when a test fails or is interrupted, and a session first removes
what a crashed one (its pid gone) left behind. Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN),
``ip`` and ``unshare``: missing, the tests are skipped, and fail under ``CI=true``.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require, state
from services import _require_postgres, mlflow_tracking_server, postgres_cluster

NAME_PREFIX = "lgx"
SESSION = f"{NAME_PREFIX}{os.getpid()}"
SUBNET = "10.231.7"  # a /24 seen only inside this session's namespaces
WORKERS = 3
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21  # bits of /proc/self/status CapEff


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def netns_pids(netns: str) -> set[int]:
    done = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=30)
    return {int(p) for p in done.stdout.split()}


def kill_netns(netns: str, sig: int = signal.SIGKILL, timeout: float = 30) -> None:
    """Send ``sig`` to every process in ``netns`` until none is left (a process may fork meanwhile)."""
    deadline = time.monotonic() + timeout
    while pids := {p for p in netns_pids(netns) if state(p) not in (None, "Z")}:
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {sorted(pids)} of network namespace {netns} outlived signal {sig}")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                if sig != signal.SIGKILL:
                    os.kill(pid, signal.SIGCONT)  # a stopped process would not see a SIGTERM
        time.sleep(0.2)


def remove_netns(netns: str) -> None:
    """Its processes killed (politely first), then the namespace and the links in it deleted."""
    with contextlib.suppress(RuntimeError):
        kill_netns(netns, signal.SIGTERM, timeout=10)
    kill_netns(netns)
    ip("netns", "delete", netns)


def remove_namespaces(owned) -> None:
    """Remove the namespaces this module made whose session's pid satisfies ``owned(pid)``."""
    errors = []
    for line in ip("netns", "list").splitlines():
        match = re.match(rf"({NAME_PREFIX}(\d+)-\S+)", line)
        if match and owned(int(match[2])):
            try:
                remove_netns(match[1])
            except RuntimeError as e:
                errors.append(str(e))
    if errors:
        raise RuntimeError("; ".join(errors))


class Host:
    """One host: a network namespace with address ``SUBNET.number`` on the bridge port ``name``."""

    def __init__(self, network: "Network", name: str, number: int):
        self.network, self.name = network, name
        self.netns = f"{SESSION}-{name}"
        self.address = f"{SUBNET}.{number}"
        self.prefix = ("ip", "netns", "exec", self.netns)
        ip("netns", "add", self.netns)
        ip("-n", self.netns, "link", "set", "lo", "up")
        ip("link", "add", "eth0", "netns", self.netns, "type", "veth", "peer", "name", name, "netns", network.netns)
        ip("-n", network.netns, "link", "set", name, "master", "br0", "up")
        ip("-n", self.netns, "addr", "add", f"{self.address}/24", "dev", "eth0")
        ip("-n", self.netns, "link", "set", "eth0", "up")
        self.mac = json.loads(ip("-n", self.netns, "-j", "link", "show", "eth0"))[0]["address"]
        # hosts know each other's hardware address for good, as they know their router's: when a
        # cable is pulled, packets vanish, instead of ARP failing and the kernel reporting "no route"
        for other in network.hosts:
            ip("-n", self.netns, "neigh", "replace", other.address, "lladdr", other.mac, "dev", "eth0", "nud", "permanent")
            ip("-n", other.netns, "neigh", "replace", self.address, "lladdr", self.mac, "dev", "eth0", "nud", "permanent")

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run on this host, with its name as hostname (a UTS namespace of its own)."""
        return [*self.prefix, "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.name, *argv]

    def start(self, argv: list[str], log: Path, **kwargs) -> subprocess.Popen:
        """Start ``argv`` here in a session of its own, stdout and stderr to ``log``."""
        with open(log, "wb") as out:
            return subprocess.Popen(self.command(argv), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)

    def python(self, code: str, *args: str, timeout: float = 120):
        """Run Python ``code`` here and return what it printed as JSON."""
        done = subprocess.run(self.command([sys.executable, "-c", code, *args]), capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"a script on host {self.name} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout)

    def kill_all(self) -> None:
        """SIGKILL every process on this host, as when it loses power."""
        kill_netns(self.netns)

    def cut(self) -> None:
        """Pull the cable: the bridge port goes down, packets are lost, no one is told."""
        ip("-n", self.network.netns, "link", "set", self.name, "down")

    def reconnect(self) -> None:
        ip("-n", self.network.netns, "link", "set", self.name, "up")


class Network:
    """The bridge, in a namespace of its own; ``add(name)`` plugs a new host into it."""

    def __init__(self):
        self.netns = f"{SESSION}-net"
        self.hosts: list[Host] = []
        ip("netns", "add", self.netns)
        ip("-n", self.netns, "link", "add", "br0", "type", "bridge")
        ip("-n", self.netns, "link", "set", "br0", "up")

    def add(self, name: str) -> Host:
        host = Host(self, name, len(self.hosts) + 1)
        self.hosts.append(host)
        return host



@contextlib.contextmanager
def network() -> Iterator[Network]:
    """A new network; afterwards, even if making it failed half-way, every namespace of this session
    removed with its processes and links. Leftovers of sessions killed before they could clean up
    (their pid is gone) are removed first."""
    remove_namespaces(lambda pid: state(pid) in (None, "Z"))
    try:
        yield Network()
    finally:
        remove_namespaces(lambda pid: pid == os.getpid())


class Cluster:
    """A database host (PostgreSQL + ``mlflow server``) and worker hosts on one network."""

    def __init__(self, db: Host, workers: list[Host], postgres, tracking_uri: str):
        self.db, self.workers, self.postgres, self.tracking_uri = db, workers, postgres, tracking_uri

    def worker(self, name: str) -> Host:
        return next(h for h in self.workers if h.name == name)

    def storage_url(self, database: str) -> str:
        """A new database on the db host, as the workers reach it."""
        return self.postgres.create_database(database)

    def sessions_from(self, host: Host) -> int:
        """How many sessions of the database server ``host`` has open."""
        return self.query("postgres", "SELECT count(*) FROM pg_stat_activity WHERE client_addr = %s",
                          (host.address,))[0][0]

    def query(self, database: str, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of ``sql`` on ``database``, through the cluster's socket directory (no network)."""
        import psycopg2

        conn = psycopg2.connect(host=str(self.postgres.root), port=self.postgres.port, user=self.postgres.user,
                                dbname=database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()


def _require_hosts() -> None:
    require(os.geteuid() == 0 or _has_capabilities(CAP_NET_ADMIN, CAP_SYS_ADMIN),
            "network namespaces need root (or CAP_NET_ADMIN and CAP_SYS_ADMIN)")
    for tool in ("ip", "unshare"):
        require(shutil.which(tool) is not None, f"{tool} is not on PATH")
    _require_postgres()


def _has_capabilities(*bits: int) -> bool:
    effective = next(int(line.split()[1], 16) for line in Path("/proc/self/status").read_text().splitlines()
                     if line.startswith("CapEff:"))
    return all(effective >> bit & 1 for bit in bits)


@pytest.fixture(scope="session")
def hosts() -> Iterator[Cluster]:
    """``db`` with PostgreSQL and an ``mlflow server`` on it, and ``w1`` .. ``w3``."""
    _require_hosts()
    with network() as net:
        db = net.add("db")
        workers = [net.add(f"w{k}") for k in range(1, WORKERS + 1)]
        settings = {"fsync": "off", "full_page_writes": "off", "max_connections": "200"}
        with postgres_cluster(settings, host=db.address, prefix=db.prefix, trusted=f"{SUBNET}.0/24") as postgres:
            with mlflow_tracking_server(postgres.create_database("mlflow"), host=db.address,
                                        prefix=db.prefix) as server:
                yield Cluster(db, workers, postgres, server.url)
