"""Models prepared once per compute process for forward-only passes (LIME's scoring, audit
curves, predictions): per dtype one copy with eval-mode batch norm folded into the
convolution before it, NHWC weights for convolutional models and, if asked, torch.compile
(or CUDA graphs). Gradients, hooks and layer methods keep the original module. A run passes
them to the methods in its `RunContext(prepared=...)`.
"""
from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from worker.explain.context import Forward, plain

log = logging.getLogger("xaiq.worker")


@dataclass(frozen=True)
class Options:
    fold_batchnorm: bool = True
    channels_last: str = "auto"   # 'auto': on for models with a Conv2d; 'on'; 'off'
    compile: str = "off"          # 'off', 'on' (torch.compile, dynamic batch), 'cuda-graphs' (reduce-overhead)

    @classmethod
    def of(cls, settings) -> "Options":
        return cls(settings.fold_batchnorm, settings.channels_last, settings.compile)


def foldable(model: nn.Module) -> list[tuple[nn.Sequential, str, str]]:
    """(container, conv name, batch norm name) for every BatchNorm2d with running statistics
    that directly follows a Conv2d in an nn.Sequential (the built-in architectures' blocks)."""
    out = []
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            names = list(seq._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = seq._modules[a], seq._modules[b]
                if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.running_mean is not None:
                    out.append((seq, a, b))
    return out


def fold_batchnorm(model: nn.Module) -> int:
    """Fold each such batch norm into its convolution, in place (eval mode); how many."""
    pairs = foldable(model)
    for seq, a, b in pairs:
        seq._modules[a] = fuse_conv_bn_eval(seq._modules[a].eval(), seq._modules[b].eval())
        seq._modules[b] = nn.Identity()
    return len(pairs)


def has_convs(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


class Prepared:
    """make(dtype) -> the forward of that dtype's prepared copy, built on first use."""

    def __init__(self, model: nn.Module, options: Options = Options()):
        self.model, self.options = model, options
        self.forwards: dict[torch.dtype, Forward] = {}
        self.lock = threading.Lock()

    def __call__(self, dtype: torch.dtype) -> Forward:
        with self.lock:
            if dtype not in self.forwards:
                self.forwards[dtype] = self._make(dtype)
            return self.forwards[dtype]

    def _make(self, dtype: torch.dtype) -> Forward:
        o, m = self.options, self.model
        nhwc = o.channels_last == "on" or (o.channels_last == "auto" and has_convs(m))
        fold = o.fold_batchnorm and bool(foldable(m))
        if isinstance(m, torch.jit.ScriptModule) or (dtype == torch.float32 and not fold and o.compile == "off"):
            return plain(m, dtype)   # nothing to change in a copy (or no copy to make): autocast, NHWC inputs
        try:
            m = copy.deepcopy(m).eval()
        except Exception as e:  # noqa: BLE001 - a model that cannot be copied runs as it is
            log.info("model not copied for %s passes (%r): running it as it is", dtype, e)
            return plain(self.model, dtype)
        if fold:
            fold_batchnorm(m)
        m = m.to(dtype=dtype, memory_format=torch.channels_last if nhwc else torch.contiguous_format)
        for p in m.parameters():
            p.requires_grad_(False)
        graphs = o.compile == "cuda-graphs"   # CUDA graphs replay fixed shapes: pad the batches
        if o.compile != "off":
            m = torch.compile(m, mode="reduce-overhead" if graphs else None, dynamic=not graphs)
        return padded(m, dtype, nhwc, pad=graphs)


def padded(model, dtype: torch.dtype, nhwc: bool, pad: bool) -> Forward:
    """x (B,C,H,W) float32 -> float32 outputs of the copy; `pad` (CUDA graphs): a batch is
    padded to the next power of two, so a stream's last, partial batch records no new graph
    (a few shapes at most, each captured once)."""
    def fwd(x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        full = 1 << max(0, n - 1).bit_length()
        if pad and n < full:
            x = torch.cat([x, x.new_zeros((full - n, *x.shape[1:]))])
        x = x.to(dtype)
        if nhwc and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            out = model(x)[:n].float()
        return out.clone() if pad else out   # a CUDA graph's output is overwritten by its next replay
    return fwd


def prepare(model: nn.Module, options: Options = Options()) -> Prepared:
    """Forward-only copies of `model` (immutable from now on: a loaded model version), built on first use."""
    return Prepared(model, options)
