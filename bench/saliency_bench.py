"""Saliency throughput: xaiq's `saliency` vs a bare forward + backward over the same batches.

Baselines: (a) fwd + autograd.grad(CE, x) (the least work that yields the input gradient),
(b) fwd + CE.backward() as the seed does (also computes parameter gradients).
Target: xaiq within 1.15x of (a).
    .venv/bin/python bench/saliency_bench.py [--quick] [--device cuda]
"""
from __future__ import annotations

from _common import args, food11, header, interleaved, median, saliency_loops

import torch
import torch.nn.functional as F


def main() -> None:
    a = args(__doc__, batch=16, batches=4, repeats_=0)
    if a.quick:
        a.batch, a.batches = 8, 2
    if a.device.startswith("cuda"):
        a.batch, a.batches = 128, 8
    dev = a.device
    model = food11(dev)
    xs = [torch.rand(a.batch, 3, 128, 128, device=dev) for _ in range(a.batches)]
    ys = [torch.randint(0, 11, (a.batch,), device=dev) for _ in range(a.batches)]
    header("saliency", a, model="food11-cnn", size=128, batch=a.batch, batches=a.batches)

    bare_grad, ours = saliency_loops(model, xs, ys)

    def bare_backward():
        for x, y in zip(xs, ys):
            x = x.clone().requires_grad_(True)
            F.cross_entropy(model(x), y).backward()
            x.grad.abs()
        model.zero_grad(set_to_none=True)

    fns = {"fwd+grad(x)": bare_grad, "fwd+backward": bare_backward, "xaiq": ours}
    t = interleaved(fns, a.repeats, dev, warm=tuple(fns))
    n = a.batch * a.batches
    m = {k: median(v) for k, v in t.items()}
    for k, v in m.items():
        print(f"{k:13s} {n / v:8.1f} images/s (median of {[round(s, 3) for s in t[k]]} s)")
    print(f"xaiq / (fwd+grad(x))   = {m['xaiq'] / m['fwd+grad(x)']:.3f}  (target <= 1.15)")
    print(f"xaiq / (fwd+backward)  = {m['xaiq'] / m['fwd+backward']:.3f}")


if __name__ == "__main__":
    main()
