"""Filter visualization: cost per visualised filter, xaiq (16 filters in one batch, one
start image each, the forward cut after the layer) vs the seed's loop (one filter per
run, 4 start images, full forward + backward). Same number of Adam steps.

Target: >= 4x cheaper per filter on CPU.
    .venv/bin/python bench/filters_bench.py [--quick] [--device cuda]
"""
from __future__ import annotations

from _common import args, food11, header, median, seed_filter_explaination, timed

import torch

import worker.explain as E


def main() -> None:
    a = args(__doc__, filters=16, iterations=20, seed_filters=2, layer=15)
    if a.quick:
        a.iterations, a.repeats = 6, 2
    dev = a.device
    model = food11(dev)
    x = torch.rand(4, 3, 128, 128, device=dev)
    filters = list(range(a.filters))
    header("filters", a, model="food11-cnn", size=128, layer=f"cnn.{a.layer}", filters=a.filters,
           iterations=a.iterations)

    def seed():
        for k in range(a.seed_filters):
            seed_filter_explaination(x, model, a.layer, k, a.iterations)

    def ours(style):
        return lambda: E.filter_explanation(model, x, f"cnn.{a.layer}", filters, a.iterations, style=style)

    E.filter_explanation(model, x, f"cnn.{a.layer}", [0], 1)   # warm up
    t = {"seed loop": [], "xaiq seed": [], "xaiq readable": []}
    for _ in range(a.repeats):
        t["seed loop"].append(timed(seed, dev) / a.seed_filters)
        t["xaiq seed"].append(timed(ours("seed"), dev) / a.filters)
        t["xaiq readable"].append(timed(ours("readable"), dev) / a.filters)
    m = {k: median(v) for k, v in t.items()}
    for k, v in m.items():
        print(f"{k:14s} {v:7.3f} s per filter ({v / a.iterations * 1000:6.1f} ms per filter-step)")
    print(f"seed loop / xaiq seed style     = {m['seed loop'] / m['xaiq seed']:.2f}x cheaper  (target >= 4x)")
    print(f"seed loop / xaiq readable style = {m['seed loop'] / m['xaiq readable']:.2f}x cheaper")


if __name__ == "__main__":
    main()
