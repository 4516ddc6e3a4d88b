"""The broker's side of the compute boundary: confined compute processes (`worker.confine`),
one per tenant and model version, kept warm for the next unit, and every call to one under
a budget enforced from outside: a wall-clock deadline, a resident-memory ceiling and the
job's cancel flag, checked while the broker waits. Past any of them the process is killed
(the next unit gets a fresh one) and the caller gets a reason in the tenant's words."""
from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from worker import confine
from worker.compute import protocol

log = logging.getLogger("xaiq.worker")
HF_SCRATCH_BYTES = 4 << 30    # a Hugging Face folder is unpacked (transformers reads files)
ADDRESS_SLACK_MB = 4096       # address space beyond the resident ceiling (libraries, thread stacks)
MAX_ANSWER = 4 << 30          # bytes of arrays one answer may carry
STAGES = {"load": "loading the model", "unit": "running the model", "report": "the audit report",
          "inspect": "inspection", "request": "the request"}


class ComputeFailed(Exception):
    """A call that did not complete; `reason` is for the tenant (built here, never model text)."""

    def __init__(self, reason: str, killed: bool):
        super().__init__(reason)
        self.reason, self.killed = reason, killed


@dataclass(frozen=True)
class Budget:
    seconds: float            # wall clock for the whole call
    memory_mb: int            # resident memory of the process


def limits_for(fmt: str | None, memory_mb: int, cpu_s: float, threads: int) -> confine.Limits:
    scratch = HF_SCRATCH_BYTES if fmt == "huggingface" else 0
    return confine.Limits(memory_mb=memory_mb + ADDRESS_SLACK_MB, cpu_s=confine.cpu_budget(cpu_s),
                          file_bytes=scratch, threads=threads)


class Compute:
    """One confined process and the model it holds."""

    def __init__(self, child: confine.Child, limits: confine.Limits):
        self.child, self.limits = child, limits
        self.reader = protocol.Reader(child.channel, MAX_ANSWER)
        self.dead = False

    def alive(self) -> bool:
        return not self.dead and self.child.status() is None

    def kill(self) -> None:
        self.dead = True
        self.child.close()

    def call(self, header: dict, arrays: dict | None, budget: Budget, check: Callable[[], None] | None = None,
             answer: Callable[[dict], tuple[dict, dict]] | None = None) -> Iterator[tuple[dict, dict]]:
        """Send a request; yield its answers up to and including `done`. `check` runs about
        every 0.1 s while waiting (it may raise, e.g. Cancelled: the process is killed first);
        `answer(question)` answers the process's questions (`kind: ask`)."""
        deadline, finished = time.monotonic() + budget.seconds, False
        confine.raise_cpu_limit(self.child.pid, budget.seconds * max(1, self.limits.threads) + 5)
        try:
            protocol.send(self.child.channel, header, arrays)
            while not finished:
                h, a = self.reader.recv(deadline, lambda: self._tick(budget, check))
                kind = h.get("kind")
                if kind == "ask" and answer is not None:
                    protocol.send(self.child.channel, *answer(h))
                elif kind == "error":
                    raise ComputeFailed(self._error(h), killed=False)
                elif kind in ("predicted", "method", "done"):
                    finished = kind == "done"    # a caller that stops reading at `done` leaves it warm
                    yield h, a
                else:
                    raise protocol.ChannelClosed(f"an answer of kind {str(kind)[:20]!r}")
        except protocol.DeadlineExceeded:
            self.kill()
            raise ComputeFailed(f"the model exceeded its time budget ({budget.seconds:.0f} s)", killed=True) from None
        except (protocol.ChannelClosed, OSError) as e:
            self.kill()
            raise ComputeFailed(self._ended(e), killed=True) from None
        except ComputeFailed:
            raise
        except BaseException:
            if not finished:
                self.kill()   # cancelled (or this process is stopping): the model's work is dropped
            raise

    def _tick(self, budget: Budget, check) -> None:
        used = confine.resident_mb(self.child.pid)
        if used > budget.memory_mb:
            self.kill()
            raise ComputeFailed(f"the model exceeded its memory budget ({budget.memory_mb} MiB; it held "
                                f"{used:.0f} MiB)", killed=True)
        if check is not None:
            check()

    def _error(self, h: dict) -> str:
        stage = STAGES.get(str(h.get("stage")), "running the model")
        if h.get("type") == "Misbehaved" and isinstance(h.get("reason"), str):
            return h["reason"][:300]
        if h.get("type") == "MemoryError":
            return f"{stage} ran out of memory (limit {self.limits.memory_mb} MiB)"
        return f"{stage} raised {confine_name(h.get('type'))}"

    def _ended(self, e: Exception) -> str:
        for _ in range(40):   # the zygote reports an exit within moments
            status = self.child.status()
            if status is not None:
                return confine.describe_exit(status, self.limits)
            time.sleep(0.05)
        log.warning("compute process %d: %s", self.child.pid, e)
        return "the model's process stopped answering"


def confine_name(name) -> str:
    """An exception type name as it may be shown: printable, short."""
    text = "".join(ch for ch in str(name) if ch.isprintable() and not ch.isspace())[:80]
    return text or "an error"


class ComputePool:
    """This broker's compute processes, keyed by (tenant, model owner, name, version): a
    tenant's model never shares a process with another tenant's data. At most `warm` are
    kept; the least recently used is stopped."""

    def __init__(self, warm: int = 2, use_zygote: bool = True):
        self.warm, self.use_zygote = warm, use_zygote
        self.procs: OrderedDict[tuple, Compute] = OrderedDict()

    def get(self, key: tuple, info: dict, weights: Callable[[], bytes], load: Callable[[], dict], budget: Budget,
            threads: int) -> Compute:
        """The process holding this model, started and loaded (within `budget`) if need be
        (`weights()` and `load()`, the load's settings, are only asked for then)."""
        proc = self.procs.get(key)
        if proc is not None and proc.alive():
            self.procs.move_to_end(key)
            return proc
        self.discard(key)
        limits = limits_for(info.get("format"), budget.memory_mb, budget.seconds, threads)
        child = confine.spawn(limits, f"model {info.get('name')!r}", warm=self.use_zygote)
        proc = Compute(child, limits)
        data = weights()
        header = {"op": "load", "info": info, **load()}
        for _ in proc.call(header, {"weights": np.frombuffer(data, np.uint8)}, budget):
            pass
        self.procs[key] = proc
        while len(self.procs) > self.warm:
            _, old = self.procs.popitem(last=False)
            old.kill()
        return proc

    def discard(self, key: tuple) -> None:
        proc = self.procs.pop(key, None)
        if proc is not None:
            proc.kill()

    def close(self) -> None:
        for key in list(self.procs):
            self.discard(key)


# --- the registration inspection ---------------------------------------------------------------

def _clean(text: object, limit: int = 300) -> str:
    s = " ".join(str(text).split())
    return "".join(ch for ch in s if ch.isprintable())[:limit]


def invalid(error: object) -> dict:
    return {"status": "invalid", "error": _clean(error)}


def checked_inspection(r: object) -> dict:
    """An inspection result from a confined process, rebuilt field by field (it could be anything)."""
    if not isinstance(r, dict) or r.get("status") not in ("ready", "invalid"):
        raise ValueError("no status")
    if r["status"] == "invalid":
        return invalid(r.get("error") or "invalid model")
    layers = []
    for layer in r["layers"]:
        ch = layer["out_channels"]
        if ch is not None and (type(ch) is not int or ch < 0):
            raise ValueError("out_channels")
        entry = {"path": _clean(layer["path"], 500), "type": _clean(layer["type"], 200), "out_channels": ch,
                 "conv": bool(layer["conv"])}
        if "tokens" in layer:
            entry["tokens"] = bool(layer["tokens"])
        if "shape" in layer:
            entry["shape"] = [int(d) for d in layer["shape"]][:8]
        layers.append(entry)
    parameters, gflops, hooks = r["parameters"], r["gflops"], r["hooks"]
    if type(parameters) is not int or parameters < 0 or type(hooks) is not bool:
        raise ValueError("parameters/hooks")
    if not isinstance(gflops, (int, float)) or isinstance(gflops, bool) or not math.isfinite(gflops) or gflops < 0:
        raise ValueError("gflops")
    return {"status": "ready", "error": None, "layers": layers, "hooks": hooks, "parameters": parameters,
            "gflops": float(gflops)}


def inspect_untrusted(info: dict, data: bytes, *, timeout_s: float = 60.0, memory_mb: int = 4096,
                      warm: bool = True) -> dict:
    """Load and check an uploaded model in a confined process (a fork of the zygote, or a
    fresh interpreter: `warm=False`). Returns `{"status": "ready", "error": None, "layers",
    "hooks", "parameters", "gflops"}` or `{"status": "invalid", "error": "<short reason>"}`;
    never raises for anything the model does."""
    limits = confine.Limits(memory_mb=memory_mb, cpu_s=int(math.ceil(timeout_s)) + 1,
                            file_bytes=HF_SCRATCH_BYTES if info.get("format") == "huggingface" else 0)
    try:
        child = confine.spawn(limits, f"model {info.get('name')!r}", warm=warm)
    except OSError as e:
        log.error("could not start the model inspection: %s", e)
        return invalid("the model inspection could not start")
    proc = Compute(child, limits)
    header = {"op": "inspect", "info": info, "memory_mb": memory_mb}
    try:
        for h, _ in proc.call(header, {"weights": np.frombuffer(bytes(data), np.uint8)},
                              Budget(timeout_s, memory_mb)):
            return checked_inspection(h.get("result"))
    except ComputeFailed as e:
        return invalid(_inspection_reason(e, timeout_s, limits))
    except (ValueError, KeyError, TypeError) as e:
        log.warning("malformed inspection result (%s)", e)
        return invalid("inspection returned no well-formed result")
    finally:
        proc.kill()
    return invalid("inspection returned no well-formed result")


def _inspection_reason(e: ComputeFailed, timeout_s: float, limits: confine.Limits) -> str:
    if "time budget" in e.reason and "CPU" not in e.reason:
        return f"inspection did not finish in {timeout_s:g} s (stopped)"
    if "CPU" in e.reason:
        return f"inspection used more than {limits.cpu_s} s of CPU time (stopped)"
    if "memory" in e.reason:
        return f"inspection stopped: out of memory (limit {limits.memory_mb} MiB)"
    return e.reason.replace("the model's process", "inspection")


def model_key(tenant: str, owner: str | None, name: str, version: str) -> tuple:
    return (tenant, owner or "", name, version)

