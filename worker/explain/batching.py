"""Where a batch runs: the model's device, the inputs moved there, predictions in chunks
(how many inputs go through one pass, and where a batch may stop, come with the run's
`RunContext`)."""
from __future__ import annotations

import torch
from torch import nn

from .context import DEFAULT, RunContext


def device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def prepare(model: nn.Module, images: torch.Tensor, labels=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images (N,C,H,W) as float on the model's device; labels as a long tensor there."""
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    dev = device_of(model)
    x = images.detach().to(dev, torch.float32)
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1).to(dev)
        if len(labels) != len(x):
            raise ValueError(f"{len(labels)} labels for {len(x)} images")
    return x, labels


def probabilities(model: nn.Module, x: torch.Tensor, chunk: int = 256, run: RunContext = DEFAULT) -> torch.Tensor:
    """softmax(model(x)) in float32, in chunks, without a graph: the one predict helper
    (through the run's prepared fp32 forward when there is one)."""
    fwd = run.forward(model)
    with torch.no_grad():
        return torch.cat([fwd(c).softmax(1) for c in x.split(chunk)])


def predicted(model: nn.Module, x: torch.Tensor, chunk: int = 64, run: RunContext = DEFAULT) -> torch.Tensor:
    """The predicted classes (N,)."""
    return probabilities(model, x, chunk, run).argmax(1)
