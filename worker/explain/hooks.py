"""Reading a layer inside a forward pass: eval mode restored afterwards, forward hooks
removed on exit (also on error) -- a long-lived worker must never leak a hook.

A layer's output is a feature map (N, C, h, w), or for ViT-style models patch tokens
(N, T, D) that `as_map` folds into their (N, D, h, w) grid (pytorch-grad-cam's
`reshape_transform`), so that Grad-CAM and filters read both the same way."""
from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

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


def hooks_available(model: nn.Module) -> bool:
    """Whether forward hooks can read this model's layers (the manifest's `hooks`): not for
    TorchScript, nor for an exported program whose module paths did not survive."""
    return not isinstance(model, torch.jit.ScriptModule) and bool(getattr(model, "xaiq_hooks", True))


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


def type_name(module: nn.Module) -> str:
    """The module's class name; TorchScript and exported (unflattened) modules keep the
    original one in `original_name`."""
    return getattr(module, "original_name", None) or type(module).__name__


_DEFAULTS: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def layer_of(model: nn.Module, layer: str | None, images: torch.Tensor | None = None) -> nn.Module:
    """A module by path ('cnn.15'); None: the model's own default (`xaiq_default_layer`, set
    by the Hugging Face loader: a CNN's last stage, a ViT's last block's first norm); else,
    for a model that ends in patch tokens (found by one probe of `images`, remembered per
    model and input shape), its last block's first norm; else the last nn.Conv2d."""
    if layer is None:
        layer = getattr(model, "xaiq_default_layer", None)
    if layer is None and images is not None:
        cache = _DEFAULTS.setdefault(model, {})
        key = tuple(images.shape[1:])
        if key not in cache:
            try:
                cache[key] = token_layer(model, output_shapes(model, images[:1].detach()), *key[-2:])
            except RuntimeError:   # no hooks (TorchScript): no probe
                cache[key] = None
        layer = cache[key]
    if layer is not None:
        return model.get_submodule(layer)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) or type_name(m) == "Conv2d"]
    if not convs:
        raise ValueError("the model has no nn.Conv2d; name a layer")
    return convs[-1]


def token_grid(tokens: int, height: int, width: int) -> tuple[int, int, int] | None:
    """(leading tokens, h, w) when `tokens` patch tokens tile an (height, width) input as an
    h x w grid of (near) square patches after some leading tokens, else None. Leading
    tokens tried in this order: a class token (ViT), none (Swin), class + distillation
    (DeiT), class + 4 registers (DINOv2 with registers)."""
    for extra in (1, 0, 2, 5):
        n = tokens - extra
        if n < 1:
            continue
        h = max(1, round((n * height / width) ** 0.5))
        if n % h == 0 and abs(height / h - width / (n // h)) <= 1:
            return extra, h, n // h
    return None


def first_tensor(out):
    """A module's output tensor: the first item of a tuple (attention blocks return
    (output, weights)), else the output itself."""
    while isinstance(out, (tuple, list)) and out:
        out = out[0]
    return out


def as_map(out, height: int, width: int) -> torch.Tensor:
    """A layer output as a feature map: (N,C,h,w) as is; tokens (N,T,D) without their
    leading (class) tokens, folded into (N,D,h,w); other shapes unchanged."""
    out = first_tensor(out)
    if out.dim() != 3:
        return out
    grid = token_grid(out.shape[1], height, width)
    if grid is None:
        raise ValueError(f"the layer outputs {tuple(out.shape)}: tokens that do not tile the "
                         f"{height}x{width} input; pick a layer with a feature map or patch tokens")
    extra, h, w = grid
    return out[:, extra:].reshape(len(out), h, w, out.shape[2]).permute(0, 3, 1, 2)


def output_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """{module path: output shape} for one forward of `example` (N,C,H,W) without a graph,
    in the order the modules finish (a module called twice: its last call)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(path):
        def record(_m, _i, out):
            t = first_tensor(out)
            if torch.is_tensor(t):
                shapes.pop(path, None)
                shapes[path] = tuple(t.shape)
        return record

    handles = []
    try:   # registered inside: a model that refuses a hook half-way keeps none
        for p, m in model.named_modules():
            if p:
                handles.append(m.register_forward_hook(hook(p)))
        dev = next(iter(model.parameters()), example).device
        with torch.no_grad(), evaluating(model):
            model(example.to(dev))
    finally:
        for h in handles:
            h.remove()
    return shapes


def token_layer(model: nn.Module, shapes: dict[str, tuple[int, ...]], height: int, width: int) -> str | None:
    """Grad-CAM's layer for a model that ends in patch tokens (no feature map after its
    last token layer): the first norm of its last block, as pytorch-grad-cam takes
    `blocks[-1].norm1` (after that, only the class token reaches the classifier, so the
    patch tokens' gradients vanish). None for a model that ends in feature maps."""
    order = list(shapes)
    maps = [i for i, p in enumerate(order) if len(shapes[p]) == 4 and shapes[p][2] * shapes[p][3] > 1]
    tokens = [i for i, p in enumerate(order)   # (N, C, 1) of a 1-d pooling is no token layer
              if len(shapes[p]) == 3 and shapes[p][2] > 1 and token_grid(shapes[p][1], height, width)]
    if not tokens or (maps and maps[-1] > tokens[-1]):
        return None
    blocks = [order[i] for i in tokens if order[i].rsplit(".", 1)[-1].isdigit()]   # items of a ModuleList
    if not blocks:
        return order[tokens[-1]]
    block = model.get_submodule(blocks[-1])
    norms = [p for p, m in block.named_modules() if p and "Norm" in type_name(m) and f"{blocks[-1]}.{p}" in shapes]
    return f"{blocks[-1]}.{norms[0]}" if norms else blocks[-1]


@contextlib.contextmanager
def forward_hooks(hooks, pre_hooks=()) -> Iterator[None]:
    """Forward hooks [(module, hook)] and pre-hooks [(module, pre_hook)], registered on entry
    and removed on exit, also on error: the methods that re-wire a backward pass through them
    (guided backprop, DeepLift, LRP) leave a long-lived model as they found it."""
    handles = []
    try:   # registered inside: a module that refuses a hook half-way keeps none
        for module, hook in pre_hooks:
            handles.append(module.register_forward_pre_hook(hook))
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
