"""Forward-only passes (LIME's scoring, audit curves, predictions) at a chosen precision.

`precision` is 'fp32', 'bf16', 'fp16' or 'auto': reduced precision only where the device
runs it fast (CUDA tensor cores; CPUs with AMX or AVX512-BF16), fp32 elsewhere. A forward
is the run's prepared copy for that dtype (batch norm folded, NHWC; see
`worker.models.prepare`), else the model itself under autocast. The guard (`choose`) runs a
probe (inputs that vary as the method's do: a few of LIME's perturbed copies, an audit's
images and their blurred baselines) at both precisions first and keeps fp32 unless the
reduced-precision error is small against how much the outputs move across the probe.
Gradient methods stay in fp32 unless a caller asks otherwise.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .context import DEFAULT, Forward, RunContext

log = logging.getLogger("xaiq.worker")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NAMES = {v: k for k, v in DTYPES.items()}
TOLERANCE = 0.1   # largest mean |reduced - fp32| output, as a fraction of the outputs' spread over the probe


def cpu_features() -> dict:
    """The CPU's instruction sets as torch sees them ({} where torch cannot tell)."""
    try:
        return dict(torch._C._cpu._get_cpu_capability())
    except Exception:  # noqa: BLE001 - an older or newer torch without this probe: assume nothing
        return {}


def fast_reduced(device: torch.device | str) -> torch.dtype | None:
    """The reduced dtype this device computes faster than fp32, or None: bf16 on CUDA from
    sm_80 (fp16 on sm_70/75 tensor cores); bf16 on CPUs with AMX or AVX512-BF16."""
    dev = torch.device(device)
    if dev.type == "cuda":
        major, _ = torch.cuda.get_device_capability(dev)
        if major >= 8 and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if major >= 7 else None
    if dev.type == "cpu":
        f = cpu_features()
        return torch.bfloat16 if f.get("amx_bf16") or f.get("avx512_bf16") else None
    return None


def resolve(precision: str, device: torch.device | str) -> torch.dtype:
    """The dtype that `precision` means on `device`."""
    if precision == "auto":
        return fast_reduced(device) or torch.float32
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return DTYPES[precision]


def agrees(reference: torch.Tensor, reduced: torch.Tensor, tol: float = TOLERANCE) -> bool:
    """Whether reduced-precision outputs (R, K) keep what a method reads from fp32 ones: their
    mean error stays under `tol` of the outputs' spread across the R probe rows (their std per
    class, averaged). A model whose outputs barely move (random weights) needs fp32."""
    ref, low = reference.float(), reduced.float()
    if not torch.isfinite(low).all():
        return False
    spread = ref.std(0).mean() if len(ref) > 1 else (ref.amax(1) - ref.amin(1)).mean()
    return bool((low - ref).abs().mean() <= tol * spread)


def choose(model: nn.Module, precision: str, probe: torch.Tensor,
           run: RunContext = DEFAULT) -> tuple[Forward, torch.dtype]:
    """(forward, dtype) for `precision`: a reduced dtype only if the model's outputs for `probe`
    (at least two inputs that vary as the method's do) agree with fp32 (`agrees`), else fp32
    (logged)."""
    forward, dtype, _ = choose_scored(model, precision, probe, run)
    return forward, dtype


def choose_scored(model: nn.Module, precision: str, probe: torch.Tensor, run: RunContext = DEFAULT
                  ) -> tuple[Forward, torch.dtype, torch.Tensor | None]:
    """`choose`, and the chosen forward's outputs for `probe` where the guard computed them
    (None at fp32, where no guard runs): a caller whose probe is part of its work keeps them."""
    dtype = resolve(precision, probe.device)
    exact = run.forward(model, torch.float32)
    if dtype == torch.float32:
        return exact, dtype, None
    low = run.forward(model, dtype)
    reference, reduced = exact(probe), low(probe)
    if agrees(reference, reduced):
        return low, dtype, reduced
    log.warning("%s outputs disagree with fp32 on the probe: these passes run in fp32", NAMES[dtype])
    return exact, torch.float32, reference
