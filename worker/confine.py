"""The one confinement of tenants' model code, at registration and in jobs.

A worker (the *broker*: it holds Redis, S3 and the leases) never runs a tenant's model. It
asks for a *confined child*, which loads the model and runs every forward and backward pass
of it, and which:

- runs as `nobody` (uid 65534, no groups) when the worker is root; a non-root worker's
  child keeps its user but is not dumpable and cannot ptrace;
- has no secrets in its environment (PATH, PYTHONPATH, HOME, TMPDIR, LANG and thread
  counts only) and inherits no descriptors but its channel to the broker and its log pipe;
- cannot open a socket or run a program: a seccomp filter refuses `socket`, `socketpair`,
  `execve`, `ptrace`, `process_vm_*`, `io_uring_*`, `bpf`, `mount`, `unshare`, keyrings and
  module loading (no network at all: the broker's channel was made before);
- has resource limits: address space, CPU seconds (raised per batch by the broker), file
  size (0 for programs, a scratch budget for a Hugging Face folder), open files, no core;
- works in a private, empty folder of its own (mode 0700), its own session, and dies with
  its parent (PR_SET_PDEATHSIG).

Two ways to start one, confined the same way by the same `confine_self`: a fork of this
worker's *zygote* (`python -m worker.confine`, started confined with torch and the
explainers imported, never running a model: a fork costs milliseconds instead of seconds of
imports), or a fresh interpreter per child when the zygote cannot run. Either way the
child runs `worker.compute.server.serve` on its channel.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import logging
import os
import platform
import queue
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Callable

log = logging.getLogger("xaiq.confine")

PACKAGE_ROOT = Path(__file__).resolve().parents[1]      # the directory that holds `worker/`
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS")
PRELOAD = ("torch", "torch._dynamo", "torch.utils.flop_counter", "safetensors.torch", "transformers",
           "transformers.models.auto.modeling_auto", "skimage.segmentation", "sklearn.linear_model",
           "worker.compute.server", "worker.compute.ops", "worker.models.inspection", "worker.explain",
           "worker.audit")


@dataclass(frozen=True)
class Limits:
    memory_mb: int            # address space
    cpu_s: int                # CPU seconds (the broker raises it per batch)
    file_bytes: int = 0       # largest file it may write (0: none)
    open_files: int = 64
    threads: int = 1          # torch's intra-op threads


# --- inside the child ------------------------------------------------------------------------

_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38


def _prctl(option: int, value: int) -> None:
    if _LIBC.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def not_dumpable() -> None:
    """Other processes of this user may not read this one's memory or environment."""
    _prctl(PR_SET_DUMPABLE, 0)


def die_with_parent(parent: int) -> None:
    """SIGKILL when the parent dies (set after any change of user: a change clears it)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:   # the parent died before the setting took
        os._exit(1)


# syscall numbers refused by the seccomp filter, per architecture
_DENIED = {
    "x86_64": (0xC000003E, {"socket": 41, "socketpair": 53, "ptrace": 101, "execve": 59, "execveat": 322,
                            "process_vm_readv": 310, "process_vm_writev": 311, "mount": 165, "umount2": 166,
                            "unshare": 272, "setns": 308, "bpf": 321, "perf_event_open": 298, "keyctl": 250,
                            "add_key": 248, "request_key": 249, "init_module": 175, "finit_module": 313,
                            "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320,
                            "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427}),
    "aarch64": (0xC00000B7, {"socket": 198, "socketpair": 199, "ptrace": 117, "execve": 221, "execveat": 281,
                             "process_vm_readv": 270, "process_vm_writev": 271, "mount": 40, "umount2": 39,
                             "unshare": 97, "setns": 268, "bpf": 280, "perf_event_open": 241, "keyctl": 219,
                             "add_key": 217, "request_key": 218, "init_module": 105, "finit_module": 273,
                             "delete_module": 106, "kexec_load": 104, "kexec_file_load": 294,
                             "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427}),
}
_SECCOMP_SYSCALL = {"x86_64": 317, "aarch64": 277}


def _bpf(arch: int, denied: list[int], x32: bool) -> bytes:
    """A classic BPF program: another architecture is killed; a denied syscall (or, on
    x86_64, any x32 one) fails with EPERM; everything else is allowed."""
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny, kill = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x80000000
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, kill), (ld, 0, 0, 0)]
    tests = ([(jge, 0, 0, 0x40000000)] if x32 else []) + [(jeq, 0, 0, nr) for nr in denied]
    n = len(tests)
    for i, (code, _, _, k) in enumerate(tests):
        prog.append((code, n - i, 0, k))        # jump over the rest and the ALLOW to the DENY
    prog += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    return b"".join(struct.pack("HBBI", *ins) for ins in prog)


def no_network_no_exec() -> None:
    """Install the seccomp filter on every thread of this process (no_new_privs first)."""
    machine = platform.machine()
    if machine not in _DENIED:
        raise OSError(f"no seccomp filter for {machine}")
    arch, table = _DENIED[machine]
    code = _bpf(arch, sorted(table.values()), x32=machine == "x86_64")
    filt = ctypes.create_string_buffer(code)
    prog = struct.pack("HxxxxxxP", len(code) // 8, ctypes.addressof(filt))
    prog_buf = ctypes.create_string_buffer(prog)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    tsync = 1   # SECCOMP_FILTER_FLAG_TSYNC
    if _LIBC.syscall(_SECCOMP_SYSCALL[machine], 1, tsync, prog_buf) != 0:   # SECCOMP_SET_MODE_FILTER
        raise OSError(ctypes.get_errno(), "seccomp filter not installed")


def set_limits(limits: Limits) -> None:
    for which, value in ((resource.RLIMIT_AS, limits.memory_mb << 20), (resource.RLIMIT_FSIZE, limits.file_bytes),
                         (resource.RLIMIT_NOFILE, limits.open_files), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(which, (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))   # SIGXCPU, then SIGKILL


def drop_to(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid or os.getgroups():
        raise SystemExit("could not switch to the confined user")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise SystemExit("the confined user can become root again")


def confine_self(limits: Limits, workdir: str, parent: int) -> None:
    """Everything a confined child does to itself before it reads a model's bytes (the
    zygote's fork and a fresh interpreter alike): its own session and folder, limits, no
    network and no programs, not dumpable, dead with its parent."""
    try:
        os.setsid()
    except PermissionError:
        pass   # already a session leader (a fresh interpreter started with start_new_session)
    os.chdir(workdir)
    os.environ.update(HOME=workdir, TMPDIR=workdir, XAIQ_SCRATCH=workdir)
    tempfile.tempdir = workdir
    set_limits(limits)
    not_dumpable()
    die_with_parent(parent)
    no_network_no_exec()
    import torch

    torch.set_num_threads(max(1, limits.threads))


# --- the broker's side: users, environments, commands -----------------------------------------

def nobody() -> tuple[int, int]:
    import grp
    import pwd

    try:
        uid = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        uid = 65534
    for group in ("nogroup", "nobody"):
        try:
            return uid, grp.getgrnam(group).gr_gid
        except KeyError:
            continue
    return uid, 65534


def environment(workdir: str, threads: int = 1) -> dict[str, str]:
    """A child's whole environment: nothing of the worker's (no credentials)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(PACKAGE_ROOT), "HOME": workdir,
           "TMPDIR": workdir, "TORCHINDUCTOR_CACHE_DIR": workdir, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONNOUSERSITE": "1", "MALLOC_ARENA_MAX": "2", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.update({var: str(max(1, threads)) for var in THREAD_VARS})
    return env


def command(module: str, *extra: str) -> list[str]:
    """The confined interpreter: no bytecode written, no user site, and (-P) neither its
    working folder nor the script's on the import path."""
    flags = ["-B", "-s"] + (["-P"] if sys.version_info >= (3, 11) else [])
    return [sys.executable, *flags, "-m", module, *extra]


@cache
def _exec_as_works(uid: int, gid: int) -> bool:
    """Whether `nobody` can start this interpreter and read torch and this package (it cannot
    when Python lives under a private home such as /root/.pyenv)."""
    import importlib.util

    paths = [importlib.util.find_spec("torch").origin, __file__, str(Path(sys.executable).resolve())]
    try:
        r = subprocess.run(
            [sys.executable, "-S", "-c", "import sys; [open(p, 'rb').close() for p in sys.argv[1:]]", *paths],
            check=False, env={"PATH": "/usr/bin:/bin"}, cwd="/", user=uid, group=gid, extra_groups=[],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


_warned_not_root = False


def privileges() -> tuple[dict, list[str]]:
    """(Popen arguments, child flags) that make a child run as `nobody` when this process is
    root: started as nobody, or (when nobody cannot read the interpreter) dropped to nobody
    after its imports."""
    global _warned_not_root
    if os.geteuid() != 0:
        if not _warned_not_root:
            _warned_not_root = True
            log.warning("not running as root: model code runs as uid %d, without a switch to 'nobody' (limits, a "
                        "clean environment, the seccomp filter and the operator check still apply)", os.geteuid())
        return {}, []
    uid, gid = nobody()
    if _exec_as_works(uid, gid):
        return {"user": uid, "group": gid, "extra_groups": []}, []
    return {}, ["--drop-to", f"{uid}:{gid}"]


def private_folder(prefix: str, popen_args: dict, drop: list[str]) -> str:
    """A fresh 0700 folder owned by the user the child runs as."""
    d = tempfile.mkdtemp(prefix=prefix)
    uid, gid = drop[1].split(":") if drop else (popen_args.get("user"), popen_args.get("group"))
    if uid is not None:
        os.chown(d, int(uid), int(gid))
    os.chmod(d, 0o700)
    return d


def keep_imports_working() -> None:
    """Before `drop_to` when the interpreter's own library is not readable by `nobody` (a
    Python under /root): open its directories now and import through /proc/self/fd/N, so
    that modules imported later still load. Only world-readable files below those
    directories become reachable that way."""
    import importlib

    def others_can_read(path: str) -> bool:
        p = Path(path)
        try:
            return all(os.stat(d).st_mode & 0o001 for d in (p, *p.parents)) and bool(os.stat(p).st_mode & 0o004)
        except OSError:
            return True

    moved: dict[str, str] = {}
    for entry in sys.path:
        if entry and os.path.isdir(entry) and not any(entry.startswith(m + os.sep) for m in moved) \
                and not others_can_read(entry):
            moved[entry] = f"/proc/self/fd/{os.open(entry, os.O_RDONLY | os.O_DIRECTORY)}"

    def move(path: str) -> str:
        for old, new in moved.items():
            if path == old or path.startswith(old + os.sep):
                return new + path[len(old):]
        return path

    if moved:
        sys.path[:] = [move(p) for p in sys.path]
        for module in list(sys.modules.values()):
            paths = getattr(module, "__path__", None)
            if isinstance(paths, list):
                paths[:] = [move(p) for p in paths]
        sys.path_importer_cache.clear()
        importlib.invalidate_caches()


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def resident_mb(pid: int) -> float:
    """Resident memory of a process, MiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


def raise_cpu_limit(pid: int, seconds: float) -> None:
    """Let a confined child use `seconds` more CPU time from now: a backstop under the wall
    deadline (each thread's time counts). Soft and hard alike, so the child cannot raise it
    itself; only a broker with CAP_SYS_RESOURCE may raise a hard limit (one without gives its
    children a lifetime budget instead, see `cpu_budget`)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        used = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        limit = int(used + seconds) + 1
        resource.prlimit(pid, resource.RLIMIT_CPU, (limit, limit))
    except (OSError, ValueError, IndexError):
        pass   # gone (its channel says so), or not ours to raise


def may_raise_limits() -> bool:
    """Whether this process may raise another's hard limits: CAP_SYS_RESOURCE in its effective
    set (root in a container often lacks it; being uid 0 is not enough)."""
    try:
        with open("/proc/self/status") as f:
            caps = next(line for line in f if line.startswith("CapEff:"))
        return bool(int(caps.split()[1], 16) >> 24 & 1)
    except (OSError, StopIteration, ValueError, IndexError):
        return False


def cpu_budget(first_s: float) -> int:
    """A child's first CPU limit: `first_s` when this broker can raise it per batch
    (CAP_SYS_RESOURCE), else a lifetime budget of a day (the wall deadlines still apply)."""
    return int(first_s) + 1 if may_raise_limits() else 24 * 3600


# --- children: a handle the broker holds -----------------------------------------------------

@dataclass
class Child:
    pid: int
    channel: socket.socket       # the broker's end
    output: "OutputLog"          # what the child printed, logged line by line
    workdir: str
    status: Callable[[], int | None]   # its wait status once it has exited, else None

    def kill(self) -> None:
        kill_group(self.pid)

    def close(self) -> None:
        self.kill()
        try:
            self.channel.close()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


class OutputLog(threading.Thread):
    """Reads a child's stdout/stderr pipe: one escaped, prefixed log line per line it
    printed (model text can never forge a line of the worker's log), the last ones kept."""

    def __init__(self, fd: int, label: str, logger: logging.Logger = log, keep: int = 32768):
        super().__init__(daemon=True, name="xaiq-child-output")
        self.fd, self.label, self.logger, self.keep = fd, label, logger, keep
        self.tail = bytearray()
        self.start()

    def run(self) -> None:
        pending = b""
        try:
            while chunk := os.read(self.fd, 1 << 16):
                self.tail = (self.tail + chunk)[-self.keep:]
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()[-4096:]
                for line in lines:
                    self._say(line)
            if pending:
                self._say(pending)
        except OSError:
            pass
        finally:
            os.close(self.fd)

    def _say(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")[:2000]
        self.logger.info("model code (%s) printed: %s", self.label, ascii(text))

    def text(self) -> str:
        return bytes(self.tail).decode("utf-8", "replace")


def _socketpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return a, b


# --- the zygote ------------------------------------------------------------------------------

class Zygote:
    """This worker's zygote: a confined process with torch imported that forks one confined
    child per request (its channel and log pipe arrive with the request, SCM_RIGHTS). A
    reader thread takes its answers: the pid of each child forked, the wait status of each
    child that ended."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.control: socket.socket | None = None
        self.lock = threading.Lock()
        self.exits: dict[int, int] = {}
        self.pids: queue.Queue = queue.Queue()

    def _start(self, threads: int) -> None:
        popen_args, drop = privileges()
        workdir = private_folder("xaiq-zygote-", popen_args, drop)
        ours, theirs = _socketpair()
        log_r, log_w = os.pipe()
        env = environment(workdir, threads) | {"XAIQ_ZYGOTE_DIR": workdir}
        try:
            self.proc = subprocess.Popen(command("worker.confine", "--control-fd", str(theirs.fileno()), *drop),
                                         stdin=subprocess.DEVNULL, stdout=log_w, stderr=log_w, cwd=workdir, env=env,
                                         close_fds=True, pass_fds=(theirs.fileno(),), start_new_session=True,
                                         **popen_args)
        finally:
            theirs.close()
            os.close(log_w)
        OutputLog(log_r, "zygote")
        self.control, self.exits, self.pids = ours, {}, queue.Queue()
        threading.Thread(target=self._read, args=(ours, self.exits, self.pids), daemon=True,
                         name="xaiq-zygote").start()

    @staticmethod
    def _read(control: socket.socket, exits: dict, pids: queue.Queue) -> None:
        try:
            for line in control.makefile("rb"):
                msg = json.loads(line)
                if "exited" in msg:
                    exits[int(msg["exited"])] = int(msg["status"])
                else:
                    pids.put(int(msg["pid"]))
        except (OSError, ValueError):
            pass
        pids.put(None)   # the zygote stopped

    def spawn(self, limits: Limits, label: str, owner: tuple[dict, list[str]]) -> Child:
        """A confined child forked by the zygote (started on first use)."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._start(limits.threads)
            ours, theirs = _socketpair()
            log_r, log_w = os.pipe()
            workdir = private_folder("xaiq-child-", *owner)
            header = json.dumps({"limits": asdict(limits), "workdir": workdir}).encode()
            try:
                socket.send_fds(self.control, [struct.pack(">I", len(header)) + header], [theirs.fileno(), log_w])
                pid = self.pids.get(timeout=120)
                if pid is None:
                    raise OSError("the zygote stopped")
            except (OSError, queue.Empty) as e:
                self._stop()
                os.close(log_r)
                ours.close()
                shutil.rmtree(workdir, ignore_errors=True)
                raise OSError(f"the zygote did not fork: {e!r}") from None
            finally:
                theirs.close()
                os.close(log_w)
            exits = self.exits
        return Child(pid, ours, OutputLog(log_r, label), workdir, lambda: exits.get(pid))

    def _stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc.pid)
            self.proc.wait()
        if self.control is not None:
            self.control.close()
        self.proc = self.control = None


ZYGOTE = Zygote()


def spawn_fresh(limits: Limits, label: str, workdir_owner: tuple[dict, list[str]]) -> Child:
    """A confined child in a fresh interpreter (when the zygote cannot run)."""
    popen_args, drop = workdir_owner
    workdir = private_folder("xaiq-child-", popen_args, drop)
    ours, theirs = _socketpair()
    log_r, log_w = os.pipe()
    cmd = command("worker.compute.server", "--fd", str(theirs.fileno()), "--limits", json.dumps(asdict(limits)),
                  "--workdir", workdir, *drop)
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_w, stderr=log_w, cwd=workdir,
                                env=environment(workdir, limits.threads), close_fds=True,
                                pass_fds=(theirs.fileno(),), start_new_session=True, **popen_args)
    finally:
        theirs.close()
        os.close(log_w)
    return Child(proc.pid, ours, OutputLog(log_r, label), workdir, lambda: _returncode_status(proc))


def _returncode_status(proc: subprocess.Popen) -> int | None:
    rc = proc.poll()
    if rc is None:
        return None
    return os.W_EXITCODE(rc, 0) if rc >= 0 else -rc   # as a wait status: exit code, or the signal


def spawn(limits: Limits, label: str, warm: bool = True) -> Child:
    """A confined child running `worker.compute.server`: a fork of the zygote, else a fresh
    interpreter."""
    owner = privileges()
    if warm:
        try:
            return ZYGOTE.spawn(limits, label, owner)
        except OSError as e:
            log.warning("the zygote could not fork a child (%r): starting a fresh interpreter", e)
    return spawn_fresh(limits, label, owner)


def describe_exit(status: int | None, limits: Limits) -> str:
    """Why a child ended, in the user's words (from its wait status)."""
    if status is None:
        return "the model's process stopped"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return "the model exceeded its time budget (CPU)"
        if sig == signal.SIGSYS:
            return "the model's process made a forbidden system call"
        return f"the model's process was stopped: out of memory (limit {limits.memory_mb} MiB) or killed"
    code = os.WEXITSTATUS(status)
    return f"the model's process exited (status {code}): out of memory (limit {limits.memory_mb} MiB) or a crash"


# --- the zygote's own process ----------------------------------------------------------------

def _zygote_child(header: dict, channel: int, log_w: int, control: socket.socket) -> None:
    control.close()
    for fd in (1, 2):
        os.dup2(log_w, fd)
    os.close(log_w)
    from worker.compute import server

    limits = Limits(**header["limits"])
    confine_self(limits, header["workdir"], parent=os.getppid())
    server.serve(socket.socket(fileno=channel), limits)


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        control.sendall(json.dumps({"exited": pid, "status": status}).encode() + b"\n")


def _serve(control: socket.socket) -> None:
    """Fork a child per request until the broker closes the control socket."""
    import select

    while True:
        ready, _, _ = select.select([control], [], [], 0.2)
        _reap(control)
        if not ready:
            continue
        try:
            msg, fds, _, _ = socket.recv_fds(control, 1 << 16, 2)
        except OSError:
            return
        if not msg:
            return
        (n,) = struct.unpack(">I", msg[:4])
        header = json.loads(msg[4:4 + n])
        channel, log_w = fds
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _zygote_child(header, channel, log_w, control)
                code = 0
            finally:
                os._exit(code)
        os.close(channel)
        os.close(log_w)
        control.sendall(json.dumps({"pid": pid}).encode() + b"\n")


def main(argv: list[str] | None = None) -> int:
    import argparse
    import importlib

    p = argparse.ArgumentParser(prog="python -m worker.confine")
    p.add_argument("--control-fd", type=int, required=True)
    p.add_argument("--drop-to", default=None, help="UID:GID to switch to after the imports")
    args = p.parse_args(argv)
    parent = os.getppid()
    tempfile.tempdir = os.environ.get("XAIQ_ZYGOTE_DIR") or os.getcwd()
    for name in PRELOAD:   # imports only: nothing may start torch's thread pools before a fork
        importlib.import_module(name)
    if args.drop_to:
        keep_imports_working()
        drop_to(*(int(x) for x in args.drop_to.split(":")))
    not_dumpable()
    die_with_parent(parent)
    _serve(socket.socket(fileno=args.control_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
