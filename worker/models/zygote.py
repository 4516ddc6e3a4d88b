"""A warm start for the confined model inspection (`sandbox`): a process started exactly as
the sandbox's child is (a fresh interpreter, no secrets in its environment, `nobody` when
the worker is root), which imports torch, transformers and the inspection code once and
then forks one child per model. Each child sets its own limits and folder and runs the
sandbox's `inspect` (the same code, the same checks, the same short reasons), so an
inspection costs a fork instead of seconds of imports. The zygote itself stays
single-threaded in Python, reads models' bytes but never runs them, and is not
dumpable; if it cannot start or dies, `sandbox.inspect_untrusted` starts one interpreter
per model as before.

    python -m worker.models.zygote [--drop-to UID:GID]

Protocol on its stdin/stdout: a request is a 4-byte length, a JSON header
{"info", "timeout_s", "memory_mb"}, an 8-byte length and the model's bytes; the answer
is a 4-byte length and JSON {"rc", "timed_out", "result", "log"}.
"""
from __future__ import annotations

import json
import os
import select
import signal
import struct
import sys
import tempfile
import time

from worker.models import sandbox

PRELOAD = ("torch", "torch._dynamo", "torch.utils.flop_counter", "safetensors.torch", "transformers",
           "transformers.models.auto.modeling_auto", "worker.models.loading", "worker.models.opcheck",
           "worker.explain.hooks", "worker.models.sandbox")


def _read_exact(fd: int, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return bytes(out)


def read_request(fd: int) -> tuple[dict, bytes]:
    (n,) = struct.unpack(">I", _read_exact(fd, 4))
    header = json.loads(_read_exact(fd, n))
    (m,) = struct.unpack(">Q", _read_exact(fd, 8))
    return header, _read_exact(fd, m)


def encode_request(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack(">I", len(h)) + h + struct.pack(">Q", len(data)) + data


def _child(header: dict, data: bytes, result_w: int, log_w: int, base: str) -> None:
    """In the forked child: its session, limits and folder, then the sandbox's inspection."""
    os.setsid()
    for fd in (1, 2):
        os.dup2(log_w, fd)
    memory_mb, timeout_s = int(header["memory_mb"]), float(header["timeout_s"])
    workdir = tempfile.mkdtemp(dir=base)
    os.chdir(workdir)
    os.environ.update(HOME=workdir, TMPDIR=workdir)
    tempfile.tempdir = workdir
    fsize = 0
    if header["info"].get("format") == "huggingface":
        os.environ["XAIQ_SCRATCH"], fsize = workdir, sandbox.HF_SCRATCH_BYTES
    sandbox._limits(memory_mb, sandbox.cpu_seconds(timeout_s), fsize)()
    result = sandbox.run_inspection(header["info"], data, memory_mb)
    sandbox.write_all(result_w, (json.dumps(result) + "\n").encode())


def _collect(pid: int, result_r: int, log_r: int, timeout_s: float) -> dict:
    """Wait for the child (killing its group at the deadline), draining its two pipes."""
    deadline, result, log, status, timed_out = time.monotonic() + timeout_s, bytearray(), bytearray(), None, False
    fds = [result_r, log_r]
    while status is None:
        ready, _, _ = select.select(fds, [], [], 0.05)
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                fds.remove(fd)
            elif fd == result_r and len(result) < (16 << 20):
                result += chunk
            elif fd == log_r:
                log = (log + chunk)[-32768:]
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status = code
        elif time.monotonic() > deadline:
            timed_out = True
            os.killpg(pid, signal.SIGKILL)
    for fd in fds:
        while chunk := os.read(fd, 1 << 16):
            (result if fd == result_r else log).extend(chunk)
    return {"rc": os.waitstatus_to_exitcode(status), "timed_out": timed_out,
            "result": bytes(result[:16 << 20]).decode("utf-8", "replace"), "log": bytes(log).decode("utf-8", "replace")}


def serve(base: str, out: int) -> None:
    """Answer requests from stdin on `out` until stdin closes."""
    while True:
        try:
            header, data = read_request(0)
        except EOFError:
            return
        result_r, result_w = os.pipe()
        log_r, log_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(result_r)
                os.close(log_r)
                _child(header, data, result_w, log_w, base)
                code = 0
            finally:
                os._exit(code)
        os.close(result_w)
        os.close(log_w)
        answer = _collect(pid, result_r, log_r, float(header["timeout_s"]))
        os.close(result_r)
        os.close(log_r)
        body = json.dumps(answer).encode()
        sandbox.write_all(out, struct.pack(">I", len(body)) + body)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import importlib

    p = argparse.ArgumentParser(prog="python -m worker.models.zygote")
    p.add_argument("--drop-to", default=None, help="UID:GID to switch to after the imports")
    args = p.parse_args(argv)
    tempfile.tempdir = os.getcwd()
    out = os.dup(1)          # the answers' channel; whatever else prints goes to stderr (the log)
    os.dup2(2, 1)
    for name in PRELOAD:
        importlib.import_module(name)
    if args.drop_to:
        sandbox._keep_imports_working()
        sandbox._drop_to(*(int(x) for x in args.drop_to.split(":")))
    sandbox.not_dumpable()
    base = tempfile.mkdtemp(prefix="models-", dir=os.environ.get("XAIQ_ZYGOTE_DIR") or os.getcwd())
    serve(base, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
