"""A registered model's inspection, run inside a confined compute process
(`worker.confine`, `worker.compute.server`): load it, check TorchScript against the operator
allowlist before anything of it runs again, run one forward pass at batch size 2 on zeros,
check the output's shape and finiteness, count FLOPs and parameters, list the layers. Only a
short reason of ours leaves: errors raised by model code read "<stage> raised <type>",
never their text (the whole traceback goes to the process's own output, which the broker
logs line by line)."""
from __future__ import annotations

import os
import sys
import traceback

ERROR_CHARS = 300


def clean(text: object, limit: int = ERROR_CHARS) -> str:
    """One line of printable characters, at most `limit` long."""
    s = " ".join(str(text).split())
    return "".join(ch for ch in s if ch.isprintable())[:limit]


def invalid(error: object) -> dict:
    return {"status": "invalid", "error": clean(error)}


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
