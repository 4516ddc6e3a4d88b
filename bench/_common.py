"""Shared bits of the explainer benchmarks: argument parsing, timing, the models."""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def args(doc: str, **extra) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quick", action="store_true", help="smaller sizes, a couple of minutes on a 2-core CPU")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    for k, v in extra.items():
        p.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    return a


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def median(xs) -> float:
    return statistics.median(xs)


def food11(device, size: int = 128):
    """The seed's food-11 CNN, random weights (speed does not depend on them), eval mode.
    size != 128: an AdaptiveAvgPool2d(4) before the classifier so it takes any size."""
    from torch import nn

    from worker.models.architectures import Food11CNN

    m = Food11CNN()
    if size != 128:
        m.cnn.append(nn.AdaptiveAvgPool2d(4))
    return m.to(device).eval()


def photo(size: int) -> np.ndarray:
    """skimage's astronaut, (size, size, 3) float in [0, 1]."""
    from skimage import data
    from skimage.transform import resize

    return resize(data.astronaut(), (size, size), anti_aliasing=True).astype(np.float32)


def header(name: str, a, **sizes) -> None:
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"cpu x{torch.get_num_threads()} threads"
    print(f"# {name} on {dev}; " + ", ".join(f"{k}={v}" for k, v in sizes.items()) + f"; repeats={a.repeats}")
