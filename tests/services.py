"""Real services for tests, on 127.0.0.1: a throwaway PostgreSQL cluster and an MLflow tracking server.

A test module asks for them with ``pytest_plugins = ["services"]`` and then uses the
session-scoped fixtures ``postgres`` (the cluster: ``.url``, ``.stop()``, ``.start()``,
``with .stopped():``, ``.create_database(name)``), ``postgres_url`` (a SQLAlchemy URL of a
database on it), ``mlflow_server`` (the server's ``http://127.0.0.1:PORT`` URL; its backend
store is a second database on the same cluster, and it serves artifacts from a temporary
directory) and ``mlflow_auth_server`` (one with MLflow's basic-auth, on SQLite: ``.url``,
``.admin_password``, ``.log``; ``mlflow_auth_tracking_server`` starts another such one, with another
``default_permission``).
``pytest_plugins`` loads this module once per session, so every module shares one cluster and one
server; importing the fixtures by name instead would start one of each per importing module.
``postgres_cluster`` and ``mlflow_tracking_server`` also run them elsewhere: on another address,
behind a command prefix such as ``ip netns exec NS`` (tests/hosts.py puts them on a host of their own).
Other servers (``optuna-dashboard``, ``mlflow models serve``) start with ``background_service``,
which any test module may import: it waits for a URL to answer and stops every process after.

``initdb`` refuses to run as root, so as root the cluster runs as the unprivileged system user
``legoexp-pg`` (created if missing, with ``useradd --system``) through ``runuser``; as any other
user it runs as that user. It trusts every local connection and listens on 127.0.0.1 only: a
test cluster, never a model for a real one (docs/scale-out.md has that). Missing binaries or
driver skip the tests, and fail them under ``CI=true``.
"""

import contextlib
import dataclasses
import glob
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require

PG_SYSTEM_USER = "legoexp-pg"
DATABASE = "legoexp"
STARTUP_TIMEOUT = 120  # seconds; the MLflow server runs its schema migrations on a shared 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} was not written)"


def postgres_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: PATH first, then Debian's versioned directories."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    return next((d for d in candidates if (d / "initdb").is_file() and (d / "pg_ctl").is_file()), None)


def ensure_system_user(name: str) -> None:
    """Create the unprivileged user the cluster runs as (root only); tolerates a concurrent creator."""
    with contextlib.suppress(KeyError):
        pwd.getpwnam(name)
        return
    done = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                          capture_output=True, text=True)
    with contextlib.suppress(KeyError):
        pwd.getpwnam(name)
        return
    raise RuntimeError(f"could not create the system user {name!r} for PostgreSQL: {done.stderr.strip()}")


class PostgresCluster:
    """A cluster in a temporary directory: ``initdb`` once, then ``start()`` / ``stop()`` at will.
    It listens on ``host``; its commands run behind ``prefix`` (e.g. ``ip netns exec NS`` to run it
    on another host, tests/hosts.py)."""

    def __init__(self, bindir: Path, settings: dict[str, str] | None = None, host: str = "127.0.0.1",
                 prefix: tuple[str, ...] = ()):
        self.bindir, self.host, self.prefix = bindir, host, tuple(prefix)
        if os.geteuid() == 0:
            ensure_system_user(PG_SYSTEM_USER)
            self.user = PG_SYSTEM_USER
            self._as_user = [*self.prefix, "runuser", "-u", self.user, "--"]
        else:
            self.user = pwd.getpwuid(os.geteuid()).pw_name
            self._as_user = [*self.prefix]
        # not under pytest's basetemp: that is private to root (0700) and the cluster's user must reach it
        self.root = Path(tempfile.mkdtemp(prefix="legoexp-pg-"))
        entry = pwd.getpwnam(self.user)
        os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self._pg(["initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "--no-locale",
                  "--encoding=UTF8", "--no-instructions"], what="initdb")
        conf = {"listen_addresses": f"'{host}'", "port": str(self.port),
                "unix_socket_directories": f"'{self.root}'", **(settings or {})}
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n# legoexp test cluster\n" + "".join(f"{k} = {v}\n" for k, v in conf.items()))

    def _pg(self, command: list[str], what: str) -> subprocess.CompletedProcess:
        done = subprocess.run([*self._as_user, str(self.bindir / command[0]), *command[1:]], cwd=self.root,
                              capture_output=True, text=True, timeout=STARTUP_TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(f"PostgreSQL {what} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}\n"
                               f"--- {self.log} ---\n{tail(self.log)}")
        return done

    @property
    def running(self) -> bool:
        return subprocess.run([*self._as_user, str(self.bindir / "pg_ctl"), "status", "-D", str(self.data)],
                              cwd=self.root, capture_output=True).returncode == 0

    def start(self) -> None:
        self._pg(["pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(STARTUP_TIMEOUT)],
                 what="start")

    def stop(self, mode: str = "fast") -> None:
        """``fast`` disconnects clients and shuts down cleanly; ``immediate`` is like a crash."""
        self._pg(["pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", str(STARTUP_TIMEOUT)],
                 what="stop")

    @contextlib.contextmanager
    def stopped(self, mode: str = "fast") -> Iterator[None]:
        """Stopped inside the block, running again after it, even if the block fails."""
        self.stop(mode)
        try:
            yield
        finally:
            self.start()

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for(DATABASE)

    def create_database(self, name: str) -> str:
        import psycopg2

        # through the cluster's socket directory, which any network namespace reaches
        conn = psycopg2.connect(host=str(self.root), port=self.port, user=self.user, dbname="postgres")
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url_for(name)

    def remove(self) -> None:
        """Stop the cluster if it runs (a crash-like stop if a clean one fails) and delete its files."""
        try:
            if self.running:
                try:
                    self.stop("fast")
                except RuntimeError:
                    self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_cluster(settings: dict[str, str] | None = None, host: str = "127.0.0.1", prefix: tuple[str, ...] = (),
                     trusted: str | None = None) -> Iterator[PostgresCluster]:
    """A started cluster with the database ``legoexp``; stopped and deleted afterwards, even on failure.
    ``trusted``: a network (``10.0.0.0/24``) whose connections it trusts besides 127.0.0.1."""
    bindir = postgres_binaries()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are not on PATH")
    cluster = PostgresCluster(bindir, settings, host, prefix)
    try:
        if trusted:
            with open(cluster.data / "pg_hba.conf", "a") as f:
                f.write(f"host all all {trusted} trust\n")
        cluster.start()
        cluster.create_database(DATABASE)
        yield cluster
    finally:
        cluster.remove()


class Service:
    """A server started in a session of its own, so that it and the workers it starts are one process group."""

    def __init__(self, url: str, process: subprocess.Popen, log: Path, name: str = "mlflow server"):
        self.url, self.process, self.log, self.name = url, process, log, name

    def stop(self) -> None:
        """Stop the server and its workers (its own process group) and check that all are gone."""
        group = self.process.pid  # the leader of the session it was started in
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            self.process.wait(timeout=10)
        deadline = time.monotonic() + 30
        while _group_alive(group):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
                raise AssertionError(f"{self.name}'s workers (process group {group}) outlived it")
            time.sleep(0.2)


def _group_alive(group: int) -> bool:
    """Any process of ``group`` other than zombies waiting for their parent to reap them."""
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = Path(stat).read_text().rpartition(")")[2].split()
            if int(fields[2]) == group and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
                return True
    return False


@contextlib.contextmanager
def mlflow_tracking_server(backend_store_uri: str, workers: int = 1, app_name: str | None = None,
                           settings: dict[str, str] | None = None, host: str = "127.0.0.1",
                           prefix: tuple[str, ...] = ()) -> Iterator[Service]:
    """``mlflow server`` on a free port of ``host`` serving artifacts from a temporary directory (its
    working directory); ready when ``/health`` answers, stopped (all its processes) afterwards.
    ``app_name`` (``basic-auth``) and its ``settings`` (environment variables) as docs/scale-out.md
    gives them; ``prefix`` runs it and the health check elsewhere (``ip netns exec NS``)."""
    root = Path(tempfile.mkdtemp(prefix="legoexp-mlflow-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | (settings or {})
    # no GenAI job runner: it starts 8 more processes (~0.8 GB) that tracking runs never use
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    command = [*prefix, sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
               "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
               "--default-artifact-root", "mlflow-artifacts:/", "--host", host, "--port", str(port),
               "--workers", str(workers), *(["--app-name", app_name] if app_name else [])]
    try:
        with background_service("mlflow server", command, f"http://{host}:{port}", "/health", root / "server.log",
                                root, env, tuple(prefix)) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def background_service(name: str, command: list[str], url: str, ready_path: str, log: Path, cwd: Path, env: dict,
                       prefix: tuple[str, ...] = ()) -> Iterator[Service]:
    """``command`` (a server listening at ``url``) running, ready once ``ready_path`` answers (within
    ``STARTUP_TIMEOUT``), and stopped with all its processes afterwards, even when the test failed."""
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=cwd, env=env, start_new_session=True)
    server = Service(url, process, log, name)
    try:
        _wait_healthy(server, prefix, ready_path)
        yield server
    finally:
        server.stop()


def _healthy(url: str, prefix: tuple[str, ...]) -> bool:
    if prefix:  # the server is on a network this process has no interface on: ask from there
        probe = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)"
        return subprocess.run([*prefix, sys.executable, "-c", probe, url], capture_output=True,
                              timeout=30).returncode == 0
    with contextlib.suppress(OSError):
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    return False


def _wait_healthy(server: Service, prefix: tuple[str, ...] = (), path: str = "/health") -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode} while starting:\n"
                               f"{tail(server.log)}")
        if _healthy(f"{server.url}{path}", prefix):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} at {server.url} not ready after {STARTUP_TIMEOUT} s:\n"
                               f"{tail(server.log)}")
        time.sleep(0.5)


def _require_postgres() -> None:
    require(postgres_binaries() is not None, "PostgreSQL server binaries (initdb, pg_ctl) are not on PATH")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        require(False, "the PostgreSQL driver psycopg2 is not installed (pip install -e '.[postgres]')")
    if os.geteuid() == 0:
        require(shutil.which("runuser") is not None, "runuser is missing: as root the cluster runs as "
                                                     f"{PG_SYSTEM_USER} through runuser")
        with contextlib.suppress(KeyError):
            pwd.getpwnam(PG_SYSTEM_USER)
            return
        require(shutil.which("useradd") is not None, f"the system user {PG_SYSTEM_USER} does not exist "
                                                     "and useradd is missing to create it")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A running PostgreSQL cluster for the session; ``.stop()`` / ``.start()`` restart it mid-test.
    fsync is off: the data is thrown away, and a clean stop loses nothing anyway."""
    _require_postgres()
    with postgres_cluster({"fsync": "off", "full_page_writes": "off"}) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres_url(postgres) -> str:
    return postgres.url


@pytest.fixture(scope="session")
def mlflow_server(postgres) -> Iterator[str]:
    """An ``mlflow server`` whose backend store is the database ``mlflow`` of ``postgres``."""
    with mlflow_tracking_server(postgres.create_database("mlflow")) as server:
        yield server.url


@dataclasses.dataclass(frozen=True)
class AuthServer:
    url: str
    admin_password: str
    log: Path


# docs/scale-out.md's auth config, with its user store on SQLite in the server's working directory
AUTH_CONFIG = """[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///basic_auth.db
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
"""


@pytest.fixture(scope="session")
def mlflow_auth_server(tmp_path_factory) -> Iterator[AuthServer]:
    """An ``mlflow server --app-name basic-auth`` set up as docs/scale-out.md says, on a SQLite
    backend store (it starts in seconds): no login, no answer (401); nothing granted, nothing
    allowed; the admin ``admin`` with a random password (``.admin_password``), which like the secret
    key reaches the server only through its environment."""
    with mlflow_auth_tracking_server(tmp_path_factory) as server:
        yield server


@contextlib.contextmanager
def mlflow_auth_tracking_server(tmp_path_factory, default_permission: str = "NO_PERMISSIONS") -> Iterator[AuthServer]:
    """The server of ``mlflow_auth_server``, with ``default_permission`` in its auth config (MLflow's
    own default is ``READ``); a module that needs a second one starts it with this."""
    require(importlib.util.find_spec("flask_wtf") is not None,
            "Flask-WTF, which MLflow's basic-auth app needs, is not installed (pip install -e .)")
    config = tmp_path_factory.mktemp("auth") / "basic_auth.ini"
    config.write_text(AUTH_CONFIG.replace("default_permission = NO_PERMISSIONS",
                                          f"default_permission = {default_permission}"))
    admin_password = secrets.token_urlsafe(18)
    settings = {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}
    root = tmp_path_factory.mktemp("auth-store")
    with mlflow_tracking_server(f"sqlite:///{root}/mlflow.db", app_name="basic-auth", settings=settings) as server:
        yield AuthServer(server.url, admin_password, server.log)
