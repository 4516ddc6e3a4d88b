"""Forward-only passes (LIME's scoring, audit curves, predictions) at a chosen precision.

`precision` is 'fp32', 'bf16', 'fp16' or 'auto': reduced precision only where the device
runs it fast (CUDA tensor cores; CPUs with AMX or AVX512-BF16), fp32 elsewhere. A forward
is the run's prepared copy for that dtype (batch norm folded, NHWC; see
`worker.models.prepare`), else the model itself under autocast. An explicit precision is
what runs. The guard (`choose_scored`) runs a probe (inputs that vary as the method's do: a few
of LIME's perturbed copies, an audit's images and their blurred baselines) at both precisions
first; under 'auto' it keeps fp32 unless the reduced-precision error is small against how
much the outputs move across the probe. Its `Verdict` is recorded with the result either way.
Gradient methods stay in fp32 unless a caller asks otherwise.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

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


def disagreement(reference: torch.Tensor, reduced: torch.Tensor) -> float:
    """Mean |reduced - fp32| of outputs (R, K) as a fraction of the outputs' spread across the R
    probe rows (their std per class, averaged); inf where the reduced outputs are not finite.
    A model whose outputs barely move (random weights) gets a large one."""
    ref, low = reference.detach().float(), reduced.detach().float()
    if not torch.isfinite(low).all():
        return float("inf")
    spread = ref.std(0).mean() if len(ref) > 1 else (ref.amax(1) - ref.amin(1)).mean()
    err = (low - ref).abs().mean()
    return float(err / spread) if spread > 0 else (0.0 if err == 0 else float("inf"))


def agrees(reference: torch.Tensor, reduced: torch.Tensor, tol: float = TOLERANCE) -> bool:
    """Whether reduced-precision outputs keep what a method reads from fp32 ones: their
    `disagreement` is at most `tol`."""
    return disagreement(reference, reduced) <= tol


@dataclass(frozen=True)
class Verdict:
    """What the agreement guard found, recorded with a method's result whatever was asked.

    asked: the precision asked for ('auto', 'fp32', 'bf16', 'fp16'); ran: the dtype the passes
    ran in; tried: the reduced dtype compared with fp32 on the probe (None: no comparison,
    fp32 asked or 'auto' on a device without a fast reduced dtype); error: its `disagreement`;
    probe: how many inputs it was measured on."""

    asked: str
    ran: str
    tried: str | None = None
    error: float | None = None
    probe: int = 0

    @property
    def agrees(self) -> bool | None:
        return None if self.error is None else self.error <= TOLERANCE

    def __str__(self) -> str:
        if self.tried is None:
            why = "as asked" if self.asked == self.ran else "this device runs no reduced precision fast"
            return f"{self.asked}: {self.ran} ({why}; no check)"
        found = (f"{self.tried} {'agrees' if self.agrees else 'disagrees'} with fp32 on {self.probe} probe inputs "
                 f"(error {self.error:.3g} of the outputs' spread, limit {TOLERANCE:g})")
        if self.asked == "auto":
            return f"auto: {self.ran}; {found}"
        return f"{self.asked}: {self.ran} as asked; {found}" + ("" if self.agrees else "; 'auto' would run fp32")


@dataclass
class Choice:
    """The forward a method scores with, its dtype, the guard's verdict, and the chosen
    forward's outputs for the probe where the guard computed them (None otherwise): a
    caller whose probe is part of its work keeps them."""

    forward: Forward
    dtype: torch.dtype
    verdict: Verdict
    scored: torch.Tensor | None = None


def choose(model: nn.Module, precision: str, probe: torch.Tensor,
           run: RunContext = DEFAULT) -> tuple[Forward, torch.dtype]:
    """(forward, dtype) of `choose_scored`."""
    c = choose_scored(model, precision, probe, run)
    return c.forward, c.dtype


def choose_scored(model: nn.Module, precision: str, probe: torch.Tensor, run: RunContext = DEFAULT) -> Choice:
    """The forward for `precision`. An explicit one ('fp32', 'bf16', 'fp16') is what runs.
    'auto' resolves to the device's fast reduced dtype (or fp32), kept only if the model's
    outputs for `probe` (at least two inputs that vary as the method's do) agree with fp32
    (`agrees`), else fp32 (logged). A reduced dtype is compared with fp32 on the probe either
    way, and the verdict recorded in the `Choice`."""
    dtype = resolve(precision, probe.device)
    exact = run.forward(model, torch.float32)
    if dtype == torch.float32:
        return Choice(exact, dtype, Verdict(precision, "fp32"))
    low = run.forward(model, dtype)
    reference, reduced = exact(probe), low(probe)
    verdict = Verdict(precision, NAMES[dtype], NAMES[dtype], disagreement(reference, reduced), len(probe))
    if verdict.agrees or precision != "auto":
        if not verdict.agrees:
            log.warning("%s", verdict)
        return Choice(low, dtype, verdict, reduced)
    verdict = Verdict(precision, "fp32", NAMES[dtype], verdict.error, len(probe))
    log.warning("%s", verdict)
    return Choice(exact, torch.float32, verdict, reference)
