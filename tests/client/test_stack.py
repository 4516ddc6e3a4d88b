"""The supervised single-machine stack: ports chosen per folder and kept with its data; a
taken port names the flag that chooses another; two stacks side by side; leftovers of a
stack that died recognised and stopped; `kill` and `xaiq down` stop everything within the
grace period; everything it writes private to its user."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("XAIQ_")}, "PYTHONPATH": str(ROOT)}


def live_groups(folder: Path) -> dict[int, list[int]]:
    """The process groups recorded in the folder's run.json that still have live members."""
    from client import procs

    run = json.loads((folder / "run.json").read_text())
    return {g: m for g, m in procs.members([p["pid"] for p in run["parts"]]).items() if m}


class Up:
    """`xaiq up` in a child process, its output collected."""

    def __init__(self, folder: Path, *flags: str):
        self.folder, self.lines = folder, []
        self.proc = subprocess.Popen([sys.executable, "-m", "client.cli", "up", "--dir", str(folder), "--port", "0",
                                      "--torch-threads", "1", *flags], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=ENV, cwd=ROOT)
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()
        wait_until(lambda: self.proc.poll() is not None or any("xaiq is up" in x for x in self.lines), 180, "xaiq up")
        assert self.proc.poll() is None, "".join(self.lines)
        self.state = json.loads((folder / "stack.json").read_text())
        self.groups = list(live_groups(folder))

    def finish(self, timeout: float) -> int:
        """Its exit code, once it has exited and all its output is read."""
        code = self.proc.wait(timeout)
        self.reader.join(10)
        return code

    def stop(self) -> None:
        """What a failed test left running: the whole stack (its later tests' machine is shared)."""
        from client.stack import down

        if self.proc.poll() is None:
            down(self.folder, 2)
            self.proc.kill()
            self.proc.wait(10)

    def client(self):
        from client.sdk import Client

        return Client(f"http://127.0.0.1:{self.state['api_port']}", self.state["tenant_key"])


def child_stack(folder: Path) -> subprocess.Popen:
    """A process that starts Redis and the S3 server of the folder, then waits (to be killed)."""
    code = ("import sys, time; from client.stack import Stack; s = Stack(sys.argv[1], workers=0); "
            "s.start(api=False); print('ready', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, env=ENV,
                            cwd=ROOT)
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.services    # starts Redis and the S3 server of its own
def test_a_second_start_reuses_ports_and_data(tmp_path):
    from client.stack import Stack, any_free_port
    from shared.settings import Settings
    from shared.storage import Storage

    first = Stack(tmp_path, workers=0, api_port=0, s3_port=0, redis_port=0)
    first.start(api=False)
    ports = (first.redis_port, first.s3_port, dict(first.s3_extra), first.secret_key, first.api_key)
    try:
        redis.Redis.from_url(first.redis_url).set("xaiq:test:kept", "yes")
        settings = Settings(s3_endpoint=first.s3_url, s3_access_key=first.access_key, s3_secret_key=first.secret_key)
        Storage(settings, patient=True).put("kept.txt", b"still here")
    finally:
        first.stop()
    second = Stack(tmp_path, workers=0)          # the folder's ports win over the defaults
    assert (second.redis_port, second.s3_port, second.s3_extra, second.secret_key, second.api_key) == ports
    second.start(api=False)
    try:
        assert redis.Redis.from_url(second.redis_url).get("xaiq:test:kept") == b"yes"
        assert Storage(settings, patient=True).get("kept.txt") == b"still here"
    finally:
        second.stop()
    third = Stack(tmp_path, workers=0, s3_port=any_free_port())
    third.start(api=False)                       # another S3 port (and internal ones): the same data
    try:
        assert third.s3_extra != ports[2] and Storage(Settings(
            s3_endpoint=third.s3_url, s3_access_key=third.access_key, s3_secret_key=third.secret_key)
        ).get("kept.txt") == b"still here"
    finally:
        third.stop()


@pytest.mark.services    # starts Redis and the S3 server of its own
def test_two_stacks_on_one_machine_choose_their_own_ports(tmp_path):
    from client.stack import Stack

    a, b = Stack(tmp_path / "a", workers=0), Stack(tmp_path / "b", workers=0)
    try:
        a.start(api=False)
        b.start(api=False)
        assert {a.redis_port, a.s3_port}.isdisjoint({b.redis_port, b.s3_port})
        for s in (a, b):
            assert redis.Redis.from_url(s.redis_url).ping()
            saved = json.loads(s.state_file.read_text())
            assert (saved["redis_port"], saved["s3_port"]) == (s.redis_port, s.s3_port)
    finally:
        a.stop()
        b.stop()


def test_up_takes_its_ports_from_flags_and_keeps_them(tmp_path):
    from client.cli import build_parser
    from client.cli_stack import make_stack

    args = build_parser().parse_args(["up", "--dir", str(tmp_path), "--port", "8201", "--redis-port", "6401",
                                      "--s3-port", "8401"])
    s = make_stack(args, 0)
    assert (s.api_port, s.redis_port, s.s3_port) == (8201, 6401, 8401)
    again = make_stack(build_parser().parse_args(["up", "--dir", str(tmp_path)]), 0)
    assert (again.api_port, again.redis_port, again.s3_port) == (8201, 6401, 8401)


@pytest.mark.parametrize("part,flag", [("redis_port", "--redis-port"), ("s3_port", "--s3-port"),
                                       ("api_port", "--port")])
def test_a_taken_port_is_an_error_that_names_the_flag(tmp_path, part, flag):
    from client.stack import PortTaken, Stack

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        s = Stack(tmp_path, workers=0, **{part: port})
        with pytest.raises(PortTaken, match=f"port {port} is taken by pid {os.getpid()} .*{flag} PORT"):
            s.start()
        assert getattr(s, part) == port and not s.procs    # nothing moved, nothing started
    s.stop()


def test_up_on_a_taken_port_says_which_flag_in_one_line(tmp_path, capsys):
    from client.cli import main

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        rc = main(["up", "--dir", str(tmp_path), "--port", "0", "--redis-port", str(port)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert f"port {port} is taken" in line and "--redis-port PORT" in line


@pytest.fixture()
def start_up():
    """Starts `xaiq up` (`Up`); whatever a failing test left running is stopped after it."""
    started = []

    def start(*args) -> Up:
        started.append(Up(*args))
        return started[-1]

    yield start
    for up in started:
        up.stop()


@pytest.mark.stack    # starts `xaiq up` (API and worker)
def test_kill_stops_everything_up_started_even_a_hung_worker(start_up, tmp_path, digit_pngs):
    from client import procs

    up = start_up(tmp_path, "--grace", "2")
    client = up.client()
    job = client.submit(digit_pngs[0][:4], model="digits-cnn", methods={"lime": {"num_samples": 4000}}, unit_size=1)
    wait_until(lambda: client.status(job)["status"] == "running", 120, "the job to run")
    run = json.loads((tmp_path / "run.json").read_text())
    worker = next(p["pid"] for p in run["parts"] if p["name"] == "worker0")
    busy = [pid for pid in procs.group_members(worker) if pid != worker]
    assert busy, "the worker's pool child"
    for pid in busy:                      # busy in its task and deaf to signals: only SIGKILL ends it
        os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    up.proc.send_signal(signal.SIGTERM)
    assert up.finish(60) == 0
    took = time.monotonic() - t0
    assert not any(procs.members(up.groups).values())
    log = (tmp_path / "logs" / "supervisor.log").read_text()
    assert "worker0" in log and "did not stop within 2 s: killed" in log
    assert took < 2 * 2 + 15, took        # two phases of the grace period, then SIGKILL
    assert not (tmp_path / "run.json").exists()
    print(f"SIGTERM to `xaiq up` with a hung worker: everything stopped in {took:.1f} s (grace 2 s)")


@pytest.mark.stack    # starts `xaiq up` (API and worker)
def test_ctrl_c_stops_everything_as_kill_does(start_up, tmp_path):
    from client import procs

    up = start_up(tmp_path, "--no-demo-model")
    up.proc.send_signal(signal.SIGINT)
    assert up.finish(60) == 0 and "stopped" in "".join(up.lines)
    assert not any(procs.members(up.groups).values())


@pytest.mark.stack    # starts `xaiq up` (API and worker)
def test_down_stops_a_stack_started_in_another_terminal(start_up, tmp_path, capsys):
    from client import procs
    from client.cli import main

    up = start_up(tmp_path, "--no-demo-model")
    assert main(["down", "--dir", str(tmp_path)]) == 0
    assert "stopped the stack in" in capsys.readouterr().out
    assert up.finish(30) == 0 and "stopped" in "".join(up.lines)
    assert not any(procs.members(up.groups).values())
    assert main(["down", "--dir", str(tmp_path)]) == 0
    assert "no stack is running" in capsys.readouterr().out


@pytest.mark.services    # starts Redis and the S3 server of its own
def test_leftovers_of_a_stack_that_died_are_recognised_and_stopped(tmp_path, capsys):
    from client import procs
    from client.cli import main
    from client.stack import Stack, StackRunning

    owner = child_stack(tmp_path)
    with pytest.raises(StackRunning, match="xaiq down --dir"):   # a live stack is never taken over
        Stack(tmp_path, workers=0).start(api=False)
    redis.Redis.from_url(f"redis://127.0.0.1:{Stack(tmp_path).redis_port}/0").set("xaiq:test:kept", "yes")
    owner.kill()
    owner.wait()
    groups = live_groups(tmp_path)
    assert len(groups) == 2                                   # Redis and the S3 server outlive it
    assert main(["down", "--dir", str(tmp_path)]) == 0        # down stops them
    assert "stopped the stack" in capsys.readouterr().out
    assert not any(procs.members(list(groups)).values())

    owner = child_stack(tmp_path)
    old = live_groups(tmp_path)
    owner.kill()
    owner.wait()
    again = Stack(tmp_path, workers=0)
    again.start(api=False)                                    # not "port taken": its own leftovers go
    try:
        assert not any(procs.members(list(old)).values())
        assert redis.Redis.from_url(again.redis_url).get("xaiq:test:kept") == b"yes"
        assert "stopping what an earlier run left behind" in (tmp_path / "logs" / "supervisor.log").read_text()
    finally:
        again.stop()


def unreadable_to_nobody(paths: list[Path]) -> dict[str, bool]:
    """{path: True when user nobody cannot read it (a folder: list it)}, checked in a forked child."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            out = {}
            for p in paths:
                try:
                    os.listdir(p) if p.is_dir() else open(p, "rb").close()
                    out[str(p)] = False
                except OSError:
                    out[str(p)] = True
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.mark.services    # starts Redis and the S3 server of its own
@pytest.mark.skipif(os.geteuid() != 0, reason="switching to user nobody needs root")
def test_stack_files_are_private_to_their_owner():
    from client.stack import Stack

    shared = Path(tempfile.mkdtemp(prefix="xaiq-private-"))
    shared.chmod(0o755)
    root = shared / "stack"
    root.mkdir(mode=0o755)               # a --dir others may enter: what is inside must still be private
    (root / "notes.txt").write_text("not the stack's")
    (root / "notes.txt").chmod(0o644)
    s = Stack(root, workers=0)
    s.start(api=False)
    try:
        redis.Redis.from_url(s.redis_url).set("xaiq:test:secret", "x")
        s.storage().put("secret.txt", b"x")
        time.sleep(1.5)                  # Redis's AOF fsync (everysec)
        ours = [root / n for n in ("stack.json", "run.json", "logs", "redis", "s3")]
        below = [p for top in ours if top.is_dir() for p in top.rglob("*") if not p.is_symlink()]
        for p in ours + below:
            mode = p.stat().st_mode & 0o777
            if p.is_dir():
                assert mode == 0o700, (p, oct(mode))
            elif p.is_file() and not (p.suffix == ".vif" and p.parent == root / "s3" / "data"):
                assert mode == 0o600, (p, oct(mode))   # (the S3 server sets 0644 on .vif; its folder is 0700)
        assert (root / "s3" / "s3.json").is_file() and (root / "redis" / "appendonlydir").is_dir()
        verdict = unreadable_to_nobody(ours + below + [root / "notes.txt", root])
        assert verdict.pop(str(root / "notes.txt")) is False and verdict.pop(str(root)) is False   # the check can fail
        assert all(verdict.values()), [p for p, ok in verdict.items() if not ok]
    finally:
        s.stop()
        subprocess.run(["rm", "-rf", str(shared)], check=False)
