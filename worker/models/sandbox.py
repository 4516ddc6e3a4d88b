"""Loading and inspecting an uploaded model in a confined child process.

An uploaded model is hostile code (TorchScript's `forward`, hooks and `__setstate__` run
whatever operators they carry; `torch.jit.load` itself runs `__setstate__`).
`inspect_untrusted` therefore never loads it in the calling process: it starts
`python -m worker.models.sandbox` with

- no secrets in its environment (PATH, PYTHONPATH, HOME, LANG and thread limits only),
  no inherited file descriptors but stdin, stdout/stderr and the result pipe;
- the user `nobody` (uid 65534, no supplementary groups) when the caller is root, switched
  to before exec. When `nobody` cannot read the interpreter itself (a Python under /root,
  as with pyenv), the child starts as root, opens the interpreter's library directories
  (imports then go through /proc/self/fd/N) and drops to `nobody` before it reads the
  model; a caller that is not root keeps its user (with a warning);
- resource limits: address space (`memory_mb`), CPU seconds (about `timeout_s`), no file
  writes (RLIMIT_FSIZE 0: loaders must work from memory), few open files, no core dumps;
  its own session, a fresh empty directory (not writable by it) as cwd, HOME and TMPDIR;
- the manifest and the model bytes on stdin, the result on a separate pipe (model code
  may print: stdout/stderr only reach this process's log, truncated);
- a wall-clock limit after which the whole process group is killed.

The child checks TorchScript against the operator allowlist (`worker.models.opcheck`)
before any forward pass. Text that model code produces never leaves it: errors raised
while loading or running a TorchScript model come back as "<stage> raised <type>".

    python -m worker.models.sandbox --result-fd N --memory-mb M [--drop-to UID:GID]

is the child's command line (stdin: 4-byte big-endian header length, JSON header
`{"info": manifest}`, then the model bytes).
"""
from __future__ import annotations

import importlib
import json
import logging
import math
import os
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory that holds `worker/`
ERROR_CHARS = 300
LOG_CHARS = 8000
RESULT_BYTES = 16 << 20
OPEN_FILES = 64
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS")
_warned_not_root = False


def clean(text: object, limit: int = ERROR_CHARS) -> str:
    """One line of printable characters, at most `limit` long."""
    s = " ".join(str(text).split())
    return "".join(ch for ch in s if ch.isprintable())[:limit]


def invalid(error: object) -> dict:
    return {"status": "invalid", "error": clean(error)}


# --- the calling side -----------------------------------------------------------------------

def _nobody() -> tuple[int, int]:
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


def _environment(workdir: str) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": str(PACKAGE_ROOT),
        "HOME": workdir,
        "TMPDIR": workdir,
        "TORCHINDUCTOR_CACHE_DIR": workdir,  # torch._dynamo (FlopCounterMode) would create one in TMPDIR
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "MALLOC_ARENA_MAX": "2",
    }
    env.update({var: "1" for var in THREAD_VARS})
    return env


def _command(*extra: str, module: str = "worker.models.sandbox") -> list[str]:
    """The confined interpreter: no bytecode written, no user site, and (-P) neither its
    working folder nor the script's on the import path."""
    flags = ["-B", "-s"] + (["-P"] if sys.version_info >= (3, 11) else [])
    return [sys.executable, *flags, "-m", module, *extra]


def cpu_seconds(timeout_s: float) -> int:
    """The CPU-time limit that goes with a wall-clock limit: whole seconds, one to spare."""
    return max(1, math.ceil(timeout_s)) + 1


def _limits(memory_mb: int, cpu_s: int, fsize: int = 0):
    """The child's resource limits, set between fork and exec (after the switch of user)."""
    import resource

    limits = [
        (resource.RLIMIT_AS, memory_mb << 20),
        (resource.RLIMIT_CPU, cpu_s),
        (resource.RLIMIT_FSIZE, fsize),
        (resource.RLIMIT_NOFILE, OPEN_FILES),
        (resource.RLIMIT_CORE, 0),
    ]

    def apply() -> None:
        for which, value in limits:
            hard = value + 2 if which == resource.RLIMIT_CPU else value  # SIGXCPU, then SIGKILL
            resource.setrlimit(which, (value, hard))

    return apply


@cache
def _exec_as_works(uid: int, gid: int) -> bool:
    """Whether `nobody` can start this interpreter and read torch and this package (it cannot
    when Python lives under a private home such as /root/.pyenv)."""
    import torch

    paths = [torch.__file__, __file__, str(Path(sys.executable).resolve())]
    try:
        r = subprocess.run(
            [sys.executable, "-S", "-c", "import sys; [open(p, 'rb').close() for p in sys.argv[1:]]", *paths],
            check=False, env={"PATH": "/usr/bin:/bin"}, cwd="/", user=uid, group=gid, extra_groups=[],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def _privileges() -> tuple[dict, list[str]]:
    """Popen arguments and child flags that make the child run as `nobody`."""
    global _warned_not_root
    if os.geteuid() != 0:
        if not _warned_not_root:
            _warned_not_root = True
            log.warning("not running as root: uploaded models are inspected as uid %d, without a switch to "
                        "'nobody' (resource limits, a clean environment and the operator check still apply)",
                        os.geteuid())
        return {}, []
    uid, gid = _nobody()
    if _exec_as_works(uid, gid):
        return {"user": uid, "group": gid, "extra_groups": []}, []
    return {}, ["--drop-to", f"{uid}:{gid}"]


class _Reader(threading.Thread):
    """Drains a pipe, keeping the first `keep` bytes (or the last ones, `tail=True`)."""

    def __init__(self, fd: int, keep: int, tail: bool = False):
        super().__init__(daemon=True)
        self.fd, self.keep, self.tail = fd, keep, tail
        self.data = bytearray()
        self.overflow = False

    def run(self) -> None:
        try:
            while chunk := os.read(self.fd, 1 << 16):
                self.data += chunk
                if len(self.data) > self.keep:
                    self.overflow = True
                    self.data = self.data[-self.keep:] if self.tail else self.data[:self.keep]
        except OSError:
            pass
        finally:
            os.close(self.fd)


def _feed(stream, payload: bytes) -> None:
    try:
        stream.write(payload)
    except (BrokenPipeError, OSError, ValueError):
        pass  # the child stopped reading: its exit status tells why
    finally:
        try:
            stream.close()
        except (BrokenPipeError, OSError, ValueError):
            pass


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _parse(raw: bytes) -> dict:
    """The child's result: exactly one line holding a well-formed JSON object."""
    if raw.count(b"\n") != 1 or not raw.endswith(b"\n"):
        raise ValueError("not exactly one line")
    r = json.loads(raw)
    if not isinstance(r, dict) or r.get("status") not in ("ready", "invalid"):
        raise ValueError("no status")
    if r["status"] == "invalid":
        return invalid(r.get("error") or "invalid model")
    layers = r["layers"]
    if not isinstance(layers, list):
        raise TypeError("layers")
    out_layers = []
    for layer in layers:
        ch = layer["out_channels"]
        if ch is not None and (type(ch) is not int or ch < 0):
            raise ValueError("out_channels")
        entry = {"path": clean(layer["path"], 500), "type": clean(layer["type"], 200),
                 "out_channels": ch, "conv": bool(layer["conv"])}
        if "tokens" in layer:
            entry["tokens"] = bool(layer["tokens"])
        if "shape" in layer:
            entry["shape"] = [int(d) for d in layer["shape"]][:8]
        out_layers.append(entry)
    parameters, gflops, hooks = r["parameters"], r["gflops"], r["hooks"]
    if type(parameters) is not int or parameters < 0 or type(hooks) is not bool:
        raise ValueError("parameters/hooks")
    if not isinstance(gflops, (int, float)) or isinstance(gflops, bool) or not math.isfinite(gflops) or gflops < 0:
        raise ValueError("gflops")
    return {"status": "ready", "error": None, "layers": out_layers, "hooks": hooks,
            "parameters": parameters, "gflops": float(gflops)}


HF_SCRATCH_BYTES = 4 << 30   # a Hugging Face folder is unpacked (transformers reads files); its code is trusted


def _chown_to_child(path: str, popen_args: dict, drop: list[str]) -> None:
    """Give `path` to the user the child runs as (`_privileges`), if it switches user."""
    uid, gid = drop[1].split(":") if drop else (popen_args.get("user"), popen_args.get("group"))
    if uid is not None:
        os.chown(path, int(uid), int(gid))


def _workdir(info: dict, popen_args: dict, drop: list[str]) -> tuple[str, dict, int]:
    """(the child's folder, its environment, its file-size limit). Only a Hugging Face model
    (code of the transformers package, weights as safetensors) gets a scratch folder it may
    write; TorchScript and exported programs may write nothing at all."""
    workdir = tempfile.mkdtemp(prefix="xaiq-inspect-")
    os.chmod(workdir, 0o755)  # readable by the child, not writable
    env, fsize = _environment(workdir), 0
    if info.get("format") == "huggingface":
        scratch = os.path.join(workdir, "scratch")
        os.mkdir(scratch, 0o700)
        _chown_to_child(scratch, popen_args, drop)
        env["XAIQ_SCRATCH"], fsize = scratch, HF_SCRATCH_BYTES
    return workdir, env, fsize


def _start(info: dict, payload: bytes, timeout_s: float, memory_mb: int):
    """Start the confined child; returns (process, its output reader, result reader, stdin feeder,
    folder, cpu s)."""
    popen_args, drop = _privileges()
    workdir, env, fsize = _workdir(info, popen_args, drop)
    result_r, result_w = os.pipe()
    cpu_s = cpu_seconds(timeout_s)
    try:
        proc = subprocess.Popen(
            _command("--result-fd", str(result_w), "--memory-mb", str(int(memory_mb)), *drop),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            pass_fds=(result_w,), close_fds=True, cwd=workdir, env=env,
            # preexec_fn only calls setrlimit (no imports, no locks), so a threaded caller is fine.
            start_new_session=True, preexec_fn=_limits(int(memory_mb), cpu_s, fsize), **popen_args)  # noqa: PLW1509
    except OSError:
        os.close(result_r)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        os.close(result_w)
    output = _Reader(os.dup(proc.stdout.fileno()), LOG_CHARS * 4, tail=True)
    proc.stdout.close()
    result = _Reader(result_r, RESULT_BYTES)
    feeder = threading.Thread(target=_feed, args=(proc.stdin, payload), daemon=True)
    for t in (output, result, feeder):
        t.start()
    return proc, output, result, feeder, workdir, cpu_s


def _verdict(rc: int | None, timed_out: bool, result: bytes, overflow: bool, timeout_s: float, memory_mb: int,
             cpu_s: int) -> dict:
    """What the child's exit status and result line say (`overflow`: the line was cut off)."""
    if timed_out:
        return invalid(f"inspection did not finish in {timeout_s:g} s (stopped)")
    if rc is not None and rc < 0:
        sig = -rc
        if sig == signal.SIGXCPU:
            return invalid(f"inspection used more than {cpu_s} s of CPU time (stopped)")
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return invalid(f"inspection stopped: out of memory or killed ({name})")
    if rc != 0:
        return invalid(f"inspection failed (exit status {rc}); out of memory (limit {memory_mb} MiB) or a crash")
    if overflow:
        return invalid("inspection returned too large a result")
    try:
        return _parse(result)
    except (ValueError, KeyError, TypeError) as e:
        log.warning("malformed inspection result (%s): %r", e, result[:200])
        return invalid("inspection returned no well-formed result")


def _log_output(info: dict, rc, text: str) -> None:
    text = "".join(ch if ch.isprintable() or ch in "\n\t" else "?" for ch in text)[-LOG_CHARS:]
    if text.strip():
        log.info("model inspection of %r (exit status %s) said:\n%s", clean(info.get("name"), 100), rc, text)


def inspect_untrusted(info: dict, data: bytes, *, timeout_s: float = 60.0, memory_mb: int = 4096,
                      warm: bool = False) -> dict:
    """Load and check an uploaded model in a confined child process.

    `info` is the model's manifest (name, architecture, format, input, mean, std, classes),
    `data` the uploaded file. Returns `{"status": "ready", "error": None, "layers": [...],
    "hooks": bool, "parameters": int, "gflops": float}` or `{"status": "invalid", "error":
    "<short reason>"}`; never raises for anything the model does."""
    if warm:
        answer = WARM.ask(info, data, timeout_s, memory_mb)
        if answer is not None:
            return answer
    header = json.dumps({"info": info}).encode()
    payload = struct.pack(">I", len(header)) + header + bytes(data)
    started, timed_out = time.monotonic(), False
    try:
        proc, output, result, feeder, workdir, cpu_s = _start(info, payload, timeout_s, memory_mb)
    except OSError as e:
        log.error("could not start the model inspection: %s", e)
        return invalid("the model inspection could not start")
    try:
        try:
            proc.wait(timeout=max(0.1, timeout_s - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(proc.pid)  # the child on a timeout, anything it left behind otherwise
        proc.wait()
        for t in (output, result, feeder):
            t.join(timeout=5)
    finally:
        if proc.returncode is None:  # this process was interrupted
            _kill_group(proc.pid)
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    _log_output(info, proc.returncode, output.data.decode("utf-8", "replace"))
    return _verdict(proc.returncode, timed_out, bytes(result.data), result.overflow, timeout_s, memory_mb, cpu_s)


class _Warm:
    """This worker process's zygote (`worker.models.zygote`): started on first use exactly as
    a one-shot child is (clean environment, `nobody`), then one fork per model."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def _start(self) -> None:
        popen_args, drop = _privileges()
        workdir = tempfile.mkdtemp(prefix="xaiq-zygote-")
        _chown_to_child(workdir, popen_args, drop)
        os.chmod(workdir, 0o700)
        cmd = _command(*drop, module="worker.models.zygote")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     cwd=workdir, env=_environment(workdir), close_fds=True, start_new_session=True,
                                     **popen_args)

    def _answer(self, deadline: float) -> dict:
        fd, body = self.proc.stdout.fileno(), b""
        while True:
            want = 4 if len(body) < 4 else 4 + struct.unpack(">I", body[:4])[0]
            if len(body) >= want and len(body) > 4:
                return json.loads(body[4:want])
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 1 << 16) if ready else b""
            if not chunk:
                raise TimeoutError("the zygote did not answer")
            body += chunk

    def ask(self, info: dict, data: bytes, timeout_s: float, memory_mb: int) -> dict | None:
        """The verdict, or None when the zygote could not give one (then: a one-shot child)."""
        from worker.models.zygote import encode_request

        with self.lock:
            try:
                if self.proc is None or self.proc.poll() is not None:
                    self._start()
                self.proc.stdin.write(encode_request({"info": info, "timeout_s": timeout_s, "memory_mb": memory_mb},
                                                     bytes(data)))
                self.proc.stdin.flush()
                a = self._answer(time.monotonic() + timeout_s + 120)   # + the zygote's own start
            except (OSError, ValueError, TimeoutError, json.JSONDecodeError, struct.error) as e:
                log.warning("the warm model inspection failed (%r); starting one process for this model", e)
                if self.proc is not None:
                    _kill_group(self.proc.pid)
                self.proc = None
                return None
        _log_output(info, a["rc"], a["log"])
        return _verdict(a["rc"], a["timed_out"], a["result"].encode(), False, timeout_s, memory_mb,
                        cpu_seconds(timeout_s))


WARM = _Warm()


# --- the child ------------------------------------------------------------------------------

class _Refused(Exception):
    """A reason of ours, safe to show."""


def _raised(stage: str, e: BaseException, memory_mb: int) -> str:
    """What may leave the child about an exception: its stage and type, never its text."""
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "can't allocate memory" in str(e)):
        return f"{stage} ran out of memory (limit {memory_mb} MiB)"
    t = type(e)
    name = t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    return f"{stage} raised {clean(name, 80)}"


def _state_dict_mismatch(info: dict, data: bytes) -> str | None:
    """For weights that do not fit a built-in architecture: counts of missing, unexpected and
    mis-shaped keys with up to 5 names (names from the user's own file, not from code)."""
    from worker.models.architectures import build
    from worker.models.loading import read_state_dict

    try:
        sd = read_state_dict(data, info["format"])
        expected = build(info["architecture"], len(info["classes"]), info["input"]["channels"]).state_dict()
    except Exception:  # noqa: BLE001 - not a key mismatch: the caller reports the original error
        return None
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [k for k in expected if k in sd and tuple(getattr(sd[k], "shape", ())) != tuple(expected[k].shape)]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("with the wrong shape", shapes)):
        if keys:
            names = ", ".join(clean(k, 60) for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
            parts.append(f"{len(keys)} {what} ({names})")
    return f"the weights do not fit {clean(info['architecture'], 40)}: keys " + "; ".join(parts)


def _load(info: dict, data: bytes, memory_mb: int):
    from worker.models.loading import build_model

    try:
        return build_model(info, data, scratch=os.environ.get("XAIQ_SCRATCH"))
    except Exception as e:  # noqa: BLE001
        print(f"loading failed: {type(e).__name__}: {e}", file=sys.stderr)
        if info.get("format") == "torchscript" or isinstance(e, MemoryError) or "can't allocate memory" in str(e):
            raise _Refused(_raised("loading", e, memory_mb)) from None
        if type(e).__name__ == "UnpicklingError":  # torch.load(weights_only=True) refused an object: say which
            found = [line.strip() for line in str(e).splitlines() if "Unsupported global" in line]
            detail = clean(found[0].split("Unsupported global:")[-1], 120) if found else "objects other than tensors"
            raise _Refused(f"not a plain state_dict (save it with torch.save(model.state_dict(), f)); it holds "
                           f"pickled {detail}") from None
        mismatch = _state_dict_mismatch(info, data)
        # Weights are data, not code: their loader's message is about the user's own file.
        raise _Refused(mismatch or f"loading raised {type(e).__name__}: {clean(e)}") from None


def _stage(stage: str, memory_mb: int, fn, *args):
    try:
        return fn(*args)
    except _Refused:
        raise
    except BaseException as e:  # noqa: BLE001 - model code: only the stage and the type leave
        traceback.print_exc(file=sys.stderr)
        raise _Refused(_raised(stage, e, memory_mb)) from None


def _inspect(info: dict, data: bytes, memory_mb: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from worker.models.loading import layers
    from worker.models.opcheck import ForbiddenOperator, check_torchscript

    torch.set_num_threads(1)
    c, h, w = (int(info["input"][k]) for k in ("channels", "height", "width"))
    n_classes = len(info["classes"])
    model = _load(info, data, memory_mb)
    scripted = isinstance(model, torch.jit.ScriptModule)
    if info.get("format") == "torchscript" and not scripted:
        raise _Refused("the file holds no TorchScript module")
    if scripted:  # before anything of it runs again
        try:
            check_torchscript(model)
        except ForbiddenOperator as e:
            raise _Refused(str(e)) from None
        except Exception as e:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            raise _Refused(_raised("the operator check", e, memory_mb)) from None

    def forward(batch: int):
        with torch.no_grad():
            return model(torch.zeros(batch, c, h, w))

    out = _stage("forward", memory_mb, forward, 2)
    if not isinstance(out, torch.Tensor):
        raise _Refused(f"the model outputs a {clean(type(out).__name__, 40)}, not a tensor")
    if tuple(out.shape) != (2, n_classes):
        raise _Refused(f"the model outputs {tuple(out.shape[1:])} for {n_classes} classes")
    if not bool(torch.isfinite(out.float()).all()):
        raise _Refused("the model outputs NaN or infinite values for an all-zero input")

    def flops() -> int:
        with FlopCounterMode(display=False) as counter:
            forward(1)
        return counter.get_total_flops()

    gflops = _stage("counting FLOPs", memory_mb, flops) / 1e9
    found = _stage("listing layers", memory_mb, layers, model, (c, h, w))
    parameters = _stage("counting parameters", memory_mb, lambda: sum(int(p.numel()) for p in model.parameters()))
    from worker.explain.hooks import hooks_available

    return {"status": "ready", "error": None, "layers": found, "hooks": hooks_available(model),
            "parameters": int(parameters), "gflops": float(gflops)}


def run_inspection(info: dict, data: bytes, memory_mb: int) -> dict:
    """The child's whole work: the verdict on one model, never an exception."""
    try:
        return _inspect(info, data, memory_mb)
    except _Refused as e:
        return invalid(e)
    except BaseException as e:  # noqa: BLE001 - our own code failed: say where, not what the model said
        traceback.print_exc(file=sys.stderr)
        return invalid(_raised("inspection", e, memory_mb))


def not_dumpable() -> None:
    """Other processes of this user may not read this one's memory or environment."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl(4, 0, 0, 0, 0)   # PR_SET_DUMPABLE, 0
    except (OSError, AttributeError):
        pass


def _read_input() -> tuple[dict, bytes]:
    raw = sys.stdin.buffer.read()
    (n,) = struct.unpack(">I", raw[:4])
    info = json.loads(raw[4:4 + n])["info"]
    return info, raw[4 + n:]


def _others_can_read(path: str) -> bool:
    p = Path(path)
    try:
        return all(os.stat(d).st_mode & stat.S_IXOTH for d in (p, *p.parents)) \
            and bool(os.stat(p).st_mode & stat.S_IROTH)
    except OSError:
        return True  # not there: nothing to keep


def _keep_imports_working() -> None:
    """Before `_drop_to` when the interpreter's own library is not readable by `nobody` (a
    Python under /root): open its directories now and import through /proc/self/fd/N, so
    that modules imported later (torch imports some lazily) still load. Only world-readable
    files below those directories become reachable that way."""
    moved: dict[str, str] = {}
    for entry in sys.path:
        if entry and os.path.isdir(entry) and not any(entry.startswith(m + os.sep) for m in moved) \
                and not _others_can_read(entry):
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


def _drop_to(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid or os.getgroups():
        raise SystemExit("could not switch to the sandbox user")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise SystemExit("the sandbox user can become root again")


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m worker.models.sandbox")
    p.add_argument("--result-fd", type=int, required=True)
    p.add_argument("--memory-mb", type=int, default=4096)
    p.add_argument("--drop-to", default=None, help="UID:GID to switch to before reading the model")
    args = p.parse_args(argv)
    # Files cannot be written here (RLIMIT_FSIZE 0), so tempfile's probe of candidate directories
    # would fail; torch asks for one at import. Nothing is ever written there.
    tempfile.tempdir = os.environ.get("TMPDIR") or os.getcwd()
    if args.drop_to:
        _keep_imports_working()
        uid, gid = (int(x) for x in args.drop_to.split(":"))
        _drop_to(uid, gid)
    info, data = _read_input()
    result = run_inspection(info, data, args.memory_mb)
    write_all(args.result_fd, (json.dumps(result) + "\n").encode())
    os.close(args.result_fd)
    sys.stdout.flush()
    sys.stderr.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
