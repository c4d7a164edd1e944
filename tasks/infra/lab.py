"""Lab mode: the project's servers for real, in the foreground until Ctrl-C.

    python -m tasks.infra.lab [--dir .lab] [--deployments flows/deployments.yaml]      (what `make lab` runs)

Starts PostgreSQL (Debian's `postgresql` package; data in <dir>/postgres, listening on 127.0.0.1 only) with the
databases `prefect` and `mlflow`, a Prefect server on it (state in <dir>/prefect), an MLflow tracking server on it
(artifacts in <dir>/mlartifacts), a work pool of type process with its workers (one flow run at a time each), and
the deployments of flows/deployments.yaml on that pool. Each service logs to <dir>/logs/<name>.log, runs in a
process group of its own and gets its stop signal when this process dies; Ctrl-C stops them in reverse order.

Settings, from the environment: LAB_PG_USER (default autophagy) and LAB_PG_PASSWORD (without it the new cluster
trusts every connection from 127.0.0.1), LAB_PG_PORT (5433: Debian's own cluster usually holds 5432), LAB_PG_HOST
(an existing PostgreSQL server to use instead of starting one), LAB_PG_BINDIR (default: `pg_config --bindir`, else
the newest /usr/lib/postgresql/*/bin), PREFECT_PORT (4200), MLFLOW_PORT (5000), LAB_POOL (autophagy), LAB_WORKERS
(2). The password reaches the servers in PGPASSWORD, never in a URL or a command line. PostgreSQL refuses to run
as root: run as root, it runs as the `postgres` user of Debian's package.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import inspect
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import httpx
from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks.errors import InputUnavailableError, ParamsError, report
from tasks.infra.prefect_server import die_with, port_free
from tasks.infra.servers import masked

ROOT = Path(__file__).resolve().parents[2]
DATABASES = ("prefect", "mlflow")
START_SECONDS = 180.0  # for a service to answer, on a loaded machine (migrations of a new database included)
STOP_SECONDS = 10.0  # between the stop signal and SIGKILL
# A sweep's worker processes compute with one thread each, each point's method loops one after the other: torch's
# default of one thread per core, or a study's own worker processes (tasks/infra/workers.py), in every sweep worker
# at once, would oversubscribe the cores.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "AUTOPHAGY_WORKERS": "1"}


def default_pool() -> str:
    return os.environ.get("LAB_POOL", "autophagy")


def _number(name: str, default: int) -> int:
    text = os.environ.get(name, str(default))
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ParamsError(f"{name}={text!r} is invalid: expected a whole number from 1 to 65535")
    return int(text)


@dataclass(frozen=True)
class Settings:
    """The lab's folder and the settings of the environment (the module's docstring)."""

    folder: Path
    user: str
    password: str | None
    pg_host: str | None  # an existing PostgreSQL server, else the lab's own on 127.0.0.1
    pg_port: int
    prefect_port: int
    mlflow_port: int
    pool: str
    workers: int

    @classmethod
    def from_env(cls, folder: Path) -> Settings:
        env = os.environ
        return cls(folder.resolve(), env.get("LAB_PG_USER") or "autophagy", env.get("LAB_PG_PASSWORD") or None,
                   env.get("LAB_PG_HOST") or None, _number("LAB_PG_PORT", 5433), _number("PREFECT_PORT", 4200),
                   _number("MLFLOW_PORT", 5000), default_pool(), _number("LAB_WORKERS", 2))

    @property
    def host(self) -> str:
        return self.pg_host or "127.0.0.1"

    def database_url(self, driver: str, name: str) -> str:
        return f"{driver}://{quote(self.user, safe='')}@{self.host}:{self.pg_port}/{name}"

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"


def connect(settings: Settings):
    """A psycopg2 connection to the database `postgres`; InputUnavailableError when PostgreSQL does not accept it."""
    import psycopg2

    try:
        return psycopg2.connect(host=settings.host, port=settings.pg_port, user=settings.user,
                                password=settings.password, dbname="postgres", connect_timeout=5)
    except psycopg2.OperationalError as exc:
        cause = " ".join(str(exc).split())[:300]
        raise InputUnavailableError(f"PostgreSQL at {settings.host}:{settings.pg_port} (user "
                                    f"{settings.user}) is unreachable ({cause}); start it or correct LAB_PG_HOST, "
                                    "LAB_PG_PORT, LAB_PG_USER or LAB_PG_PASSWORD") from None


def create_databases(settings: Settings) -> None:
    """The databases of DATABASES that PostgreSQL lacks."""
    from psycopg2 import sql

    with contextlib.closing(connect(settings)) as connection:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT datname FROM pg_database")
            existing = {row[0] for row in cursor}
            for name in sorted(set(DATABASES) - existing):
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def postgres_bindir() -> Path:
    """LAB_PG_BINDIR, else the first of `pg_config --bindir` and /usr/lib/postgresql/*/bin (newest first) that holds
    initdb and postgres."""
    if os.environ.get("LAB_PG_BINDIR"):
        candidates = [os.environ["LAB_PG_BINDIR"]]
    else:
        try:
            candidates = [subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                         check=True).stdout.strip()]
        except (OSError, subprocess.CalledProcessError):
            candidates = []
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda path: [
            int(part) for part in Path(path).parent.name.split(".") if part.isdigit()], reverse=True)
        candidates += versions
    for folder in map(Path, candidates):
        if all(os.access(folder / name, os.X_OK) for name in ("initdb", "postgres")):
            return folder
    where = ", ".join(candidates) or "pg_config --bindir"
    raise InputUnavailableError(f"no PostgreSQL server (initdb, postgres) in {where}; install Debian's package "
                                "(apt-get install postgresql), set LAB_PG_BINDIR to its bin folder, or use an existing "
                                "server with LAB_PG_HOST")


def postgres_account() -> pwd.struct_passwd | None:
    """The user PostgreSQL runs as when this process is root (it refuses root): `postgres`; None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise InputUnavailableError("PostgreSQL does not run as root and there is no user postgres; run the lab as "
                                    "another user, or install Debian's package (apt-get install postgresql)") from None


def _as(account: pwd.struct_passwd | None) -> dict:
    """Popen arguments that run the child as `account` (None: as this process)."""
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []} if account else {}


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return masked(lines[-1][:300]) if lines else "no output"


@dataclass
class Service:
    """A child process in a process group of its own, logging to `log`."""

    name: str
    process: subprocess.Popen
    log: Path
    stop_signal: int

    @classmethod
    def spawn(cls, name: str, command: list, logs: Path, env: dict[str, str], stop_signal: int = signal.SIGTERM,
              account: pwd.struct_passwd | None = None, cwd: Path | None = None) -> Service:
        log = logs / f"{name}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen([str(part) for part in command], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=subprocess.STDOUT, process_group=0,
                                       preexec_fn=die_with(os.getpid(), stop_signal), **_as(account))
        return cls(name, process, log, stop_signal)

    def failure(self, what: str) -> InputUnavailableError:
        return InputUnavailableError(f"{self.name} {what} ({_last_line(self.log)}); see {self.log}")

    def stop(self) -> None:
        """Unless it has ended: the stop signal to its process group, SIGKILL after STOP_SECONDS, then SIGKILL to
        what is left of the group; reaped either way."""
        if self.process.poll() is not None:
            return
        for sig in (self.stop_signal, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_SECONDS)
        self.process.wait()


def wait_until(ready: Callable[[], bool], services: list[Service], what: str) -> None:
    """Return once `ready()` (connection errors count as not yet); InputUnavailableError if one of `services`
    exits first or START_SECONDS pass."""
    import psycopg2

    deadline = time.monotonic() + START_SECONDS
    while True:
        with contextlib.suppress(OSError, httpx.TransportError, psycopg2.Error, InputUnavailableError):
            if ready():
                return
        for service in services:
            if service.process.poll() is not None:
                raise service.failure(f"exited with code {service.process.returncode}")
        if time.monotonic() > deadline:
            raise services[0].failure(f"did not {what} within {START_SECONDS:g} s")
        time.sleep(0.5)


def healthy(url: str) -> bool:
    return httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200


def start_postgres(settings: Settings, bindir: Path, account: pwd.struct_passwd | None, logs: Path,
                   start: Callable[..., Service]) -> Service:
    """The lab's own cluster in <dir>/postgres (created by initdb the first time), on 127.0.0.1 only, without Unix
    socket, started by `start`; returns once it accepts connections."""
    data = settings.folder / "postgres"
    if not (data / "PG_VERSION").exists():
        data.mkdir(mode=0o700, exist_ok=True)  # initdb empties it again when it fails
        with tempfile.NamedTemporaryFile("w", prefix="pwfile-") as pwfile:  # mode 600, removed when closed
            pwfile.write(settings.password or "")
            pwfile.flush()
            if account:
                for path in (data, pwfile.name):
                    os.chown(path, account.pw_uid, account.pw_gid)
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile.name}"] if settings.password else ["--auth=trust"]
            initdb = start("initdb", [bindir / "initdb", "-D", data, "-U", settings.user, "-E", "UTF8", "--locale=C",
                                      *auth], logs, dict(os.environ), account=account, cwd=data)
            if initdb.process.wait() != 0:
                raise initdb.failure(f"exited with code {initdb.process.returncode}")
    service = start("postgres", [bindir / "postgres", "-D", data, "-p", settings.pg_port, "-c",
                                 "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="],
                    logs, dict(os.environ), signal.SIGINT, account, cwd=data)  # SIGINT: PostgreSQL's fast shutdown
    wait_until(lambda: not connect(settings).close(), [service], "accept connections")
    return service


def check_pool(name: str) -> None:
    """InputUnavailableError unless PREFECT_API_URL names a server that has the work pool `name`."""
    url = PREFECT_API_URL.value()
    if not url:
        raise InputUnavailableError(f"work pool {name}: PREFECT_API_URL is not set; export the one `make lab` prints")
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            raise InputUnavailableError(f"work pool {name!r} not found at {masked(url)}; start the lab with "
                                        f"LAB_POOL={name} (make lab), or create it (prefect work-pool create {name} "
                                        "--type process) and start its workers") from None


def from_repository(flow: Flow) -> Flow:
    """`flow` loaded from this repository's folder, so that a deployment of it tells a work pool's workers where the
    code is (its pull step sets the working directory there)."""
    entrypoint = f"{Path(inspect.getsourcefile(flow.fn)).relative_to(ROOT)}:{flow.fn.__name__}"
    return flow.from_source(source=str(ROOT), entrypoint=entrypoint)


def ensure_pool(name: str) -> None:
    """The work pool `name` of type process, created if missing."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process",
                                                   base_job_template=ProcessWorker.get_default_base_job_template()))
            return
    if pool.type != "process":
        raise ParamsError(f"LAB_POOL={name}: that work pool is of type {pool.type}, not process; choose another name")


def workers_online(pool: str, names: list[str], since: datetime) -> bool:
    """Whether every worker of `names` has sent a heartbeat to `pool` since `since`."""
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterLastHeartbeatTime

    with get_client(sync_client=True) as client:
        workers = client.read_workers_for_work_pool(pool, offset=0, limit=len(names), worker_filter=WorkerFilter(
            last_heartbeat_time=WorkerFilterLastHeartbeatTime(after_=since)))
    return set(names) <= {worker.name for worker in workers}


def preflight(settings: Settings) -> tuple[Path | None, pwd.struct_passwd | None]:
    """Check what can be checked before anything is written: free ports, PostgreSQL's binaries or the existing
    server. The bin folder and the account of the lab's own PostgreSQL (None, None with LAB_PG_HOST)."""
    ports = {"PREFECT_PORT": settings.prefect_port, "MLFLOW_PORT": settings.mlflow_port}
    if not settings.pg_host:
        ports["LAB_PG_PORT"] = settings.pg_port
    for variable, port in ports.items():
        if not port_free(port):
            raise InputUnavailableError(f"port {port} of 127.0.0.1 ({variable}) is in use (a lab already running?); "
                                        f"stop what listens there or choose another port with {variable}")
    if settings.pg_host:
        connect(settings).close()
        return None, None
    return postgres_bindir(), postgres_account()


def lab(settings: Settings, deployments: Path) -> None:
    """Start every service, print the addresses, and watch them until one ends or Ctrl-C (KeyboardInterrupt); the
    services stop in reverse order either way."""
    started = time.monotonic()
    bindir, account = preflight(settings)
    logs = settings.folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (settings.folder / "prefect").mkdir(exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PREFECT_HOME": str(settings.folder / "prefect"), "PREFECT_API_URL": settings.prefect_api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    servers = {**env, **({"PGPASSWORD": settings.password} if settings.password else {})}
    clients = {**env, "MLFLOW_TRACKING_URI": settings.mlflow_uri}
    with contextlib.ExitStack() as stack, temporary_settings(updates={PREFECT_API_URL: settings.prefect_api}):
        stack.callback(print, "Lab stopped.", flush=True)

        def start(*args, **kwargs) -> Service:
            service = Service.spawn(*args, **kwargs)
            stack.callback(service.stop)
            return service

        running = [start_postgres(settings, bindir, account, logs, start)] if bindir else []
        create_databases(settings)
        prefect = start("prefect", [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                    "--port", settings.prefect_port], logs,
                        {**servers, "PREFECT_SERVER_DATABASE_CONNECTION_URL":
                            settings.database_url("postgresql+asyncpg", "prefect")})
        mlflow = start("mlflow", [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                                  settings.database_url("postgresql+psycopg2", "mlflow"), "--serve-artifacts",
                                  "--artifacts-destination", settings.folder / "mlartifacts", "--host", "127.0.0.1",
                                  "--port", settings.mlflow_port, "--workers", "1"], logs,
                       {**servers, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no GenAI jobs: 5 processes fewer
        wait_until(lambda: healthy(settings.prefect_api), [prefect], "answer GET /api/health")
        ensure_pool(settings.pool)
        since = datetime.now(timezone.utc)
        names = [f"{settings.pool}-{i}" for i in range(1, settings.workers + 1)]
        workers = [start(f"worker-{i}", [sys.executable, "-m", "prefect", "worker", "start", "--pool", settings.pool,
                                         "--type", "process", "--name", name, "--limit", "1"], logs,
                         {**clients, **ONE_THREAD})
                   for i, name in enumerate(names, 1)]
        deploy = start("deploy", [sys.executable, "-m", "flows.serve", deployments, "--pool", settings.pool], logs,
                       clients)
        wait_until(lambda: healthy(settings.mlflow_uri), [mlflow], "answer GET /health")
        wait_until(lambda: workers_online(settings.pool, names, since), workers, "send a heartbeat")
        if deploy.process.wait() != 0:
            raise deploy.failure(f"of {deployments} on work pool {settings.pool} failed")
        running += [prefect, mlflow, *workers]
        print(f"Lab ready in {time.monotonic() - started:.0f} s, logs in {logs}/. In another shell:\n"
              f"  export PREFECT_API_URL={settings.prefect_api}\n  export MLFLOW_TRACKING_URI={settings.mlflow_uri}\n"
              f"Prefect UI http://127.0.0.1:{settings.prefect_port}, MLflow UI {settings.mlflow_uri}, work pool "
              f"{settings.pool} with {settings.workers} process workers (python -m flows.sweep "
              f"sweeps/gaussian_bias.yaml --runner pool --pool {settings.pool}). Ctrl-C stops the lab.", flush=True)
        while all(service.process.poll() is None for service in running):
            time.sleep(1)
        ended = next(service for service in running if service.process.poll() is not None)
        raise ended.failure(f"exited with code {ended.process.returncode}, so the lab stopped")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(".lab"), help="the lab's state and logs (default .lab)")
    parser.add_argument("--deployments", type=Path, default=ROOT / "flows/deployments.yaml",
                        help="the deployments to register on the work pool (default flows/deployments.yaml)")
    args = parser.parse_args(argv)

    def run() -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
        signal.signal(signal.SIGTERM, _interrupt)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C or SIGTERM: the services have stopped
            lab(Settings.from_env(args.dir), args.deployments)

    return report(run)


if __name__ == "__main__":
    sys.exit(main())
