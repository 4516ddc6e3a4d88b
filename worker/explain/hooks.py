"""Reading a layer inside a forward pass: eval mode restored afterwards, forward hooks
removed on exit (also on error) -- a long-lived worker must never leak a hook."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """model.eval() inside, every module's `training` flag restored on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, t in flags:
            m.training = t


class Stop(Exception):
    """Raised by a capture hook to cut the forward pass after the layer."""


class Capture:
    """Holds the latest output of a hooked module (`.value`)."""

    value: torch.Tensor | None = None


@contextlib.contextmanager
def capture(module: nn.Module, stop: bool = False) -> Iterator[Capture]:
    """Forward hook storing `module`'s output; removed on exit, also on error.

    stop=True ends the forward pass right after `module` (use `run_until`).
    """
    box = Capture()

    def hook(_m, _inp, out):
        box.value = out
        if stop:
            raise Stop

    handle = module.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def run_until(model: nn.Module, x: torch.Tensor, box: Capture) -> torch.Tensor:
    """model(x) under a `capture(..., stop=True)`: the hooked output."""
    try:
        model(x)
    except Stop:
        pass
    if box.value is None:
        raise RuntimeError("the hooked layer was not reached in the forward pass")
    return box.value


def layer_of(model: nn.Module, layer: str | None) -> nn.Module:
    """A module by path ('cnn.15'); None: the last nn.Conv2d."""
    if layer is not None:
        return model.get_submodule(layer)
    convs = [m for m in model.modules()
             if isinstance(m, nn.Conv2d) or getattr(m, "original_name", None) == "Conv2d"]
    if not convs:
        raise ValueError("the model has no nn.Conv2d; name a layer")
    return convs[-1]
