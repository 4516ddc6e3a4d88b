"""Independent reference implementations the tests compare against, imported the one way
that works here.

zennit (LRP) imports `torchvision.models.resnet` at import time only to name two ResNet
blocks for its ResNet canonizers, and quantus imports zennit when it is installed. A
torchvision build that matches this machine's CPU torch cannot be installed (it replaces
torch with a CUDA build), so while zennit is imported, a stand-in `torchvision.models.resnet`
holding those two names is registered, and removed right after (other packages that probe
for torchvision, such as transformers, must not find it). No zennit or quantus computation
goes through it: their rules, composites and metrics are their own code.
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
import types


@contextlib.contextmanager
def _stand_in_for_torchvision():
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        yield
        return
    from torch import nn

    resnet = types.ModuleType("torchvision.models.resnet")
    resnet.Bottleneck = type("Bottleneck", (nn.Module,), {})
    resnet.BasicBlock = type("BasicBlock", (nn.Module,), {})
    models = types.ModuleType("torchvision.models")
    models.resnet = resnet
    root = types.ModuleType("torchvision")
    root.models = models
    names = {"torchvision": root, "torchvision.models": models, "torchvision.models.resnet": resnet}
    sys.modules.update(names)
    try:
        yield
    finally:
        for name in names:
            sys.modules.pop(name, None)


def zennit():
    """The zennit package (LRP rules and composites)."""
    with _stand_in_for_torchvision():
        import zennit as z
        import zennit.attribution  # noqa: F401
        import zennit.composites  # noqa: F401
        import zennit.rules  # noqa: F401
    return z


def quantus():
    """The quantus package (explanation metrics)."""
    zennit()     # imported first, so quantus finds it without torchvision
    with _stand_in_for_torchvision():
        import quantus as q
    return q
