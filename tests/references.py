"""Independent reference implementations the tests compare against, imported the one way
that works here.

zennit (LRP) imports `torchvision.models.resnet` at import time only to name two ResNet
blocks for its ResNet canonizers, and quantus imports zennit when it is installed. A
torchvision build that matches this machine's CPU torch cannot be installed (it replaces
torch with a CUDA build), so before importing either, this module registers a stand-in
`torchvision.models.resnet` holding those two names and nothing else. No zennit or quantus
computation goes through it: their rules, composites and metrics are their own code.
"""
from __future__ import annotations

import importlib.util
import sys
import types


def _stand_in_for_torchvision() -> None:
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return
    from importlib.machinery import ModuleSpec

    from torch import nn

    resnet = types.ModuleType("torchvision.models.resnet")
    resnet.Bottleneck = type("Bottleneck", (nn.Module,), {})
    resnet.BasicBlock = type("BasicBlock", (nn.Module,), {})
    models = types.ModuleType("torchvision.models")
    models.resnet = resnet
    root = types.ModuleType("torchvision")
    root.models = models
    for name, module in (("torchvision", root), ("torchvision.models", models), ("torchvision.models.resnet", resnet)):
        module.__spec__ = ModuleSpec(name, None)   # find_spec works (packages that probe for torchvision ask it)
        sys.modules[name] = module


def zennit():
    """The zennit package (LRP rules and composites)."""
    _stand_in_for_torchvision()
    import zennit as z
    import zennit.attribution  # noqa: F401
    import zennit.composites  # noqa: F401
    import zennit.rules  # noqa: F401
    return z


def quantus():
    """The quantus package (explanation metrics)."""
    _stand_in_for_torchvision()
    import quantus as q
    return q
