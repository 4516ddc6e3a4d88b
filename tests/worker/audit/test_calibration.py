"""Calibration of the shortcut search (candidates from the maps, tested on the model) on
models it was not tuned for: the false-flag rate on clean models with every method, and
detection of planted markers of several sizes, positions, colours and strengths (a
marker that is needed but not sufficient included: `twin`), on two kinds of model and
data made here (calibration.py: a tiny CNN on upscaled digits, one on noisy coloured
textures).

The defaults were set looking at seed 101 only; this test uses seeds 11-12 (quick run,
<= 120 s on an idle 2-core machine) or 11-15 with more markers (XAIQ_SLOW=1). A marker
counts for detection only where the model relies on it (the class's accuracy falls by
>= 0.5 without it); a flag of a planted model that is not at the marker counts as false.
`test_rates` prints the table."""
import os
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from calibration import METHODS, Marker, audit, make, overlap  # noqa: E402

SLOW = os.environ.get("XAIQ_SLOW") == "1"
SEEDS = [11, 12, 13, 14, 15] if SLOW else [11, 12]
KINDS = ["digits", "textures"]
MARKERS = [
    Marker(size=3, corner="tl"),
    Marker(size=2, corner="br", colour="green", strength=0.7),
    Marker(size=4, corner="mid-left", colour="dark"),
    Marker(size=3, corner="tr", twin=True),
] + ([Marker(size=2, corner="tl", colour="red", strength=0.5), Marker(size=4, corner="br", colour="red"),
      Marker(size=3, corner="bl", colour="dark", strength=0.8, twin=True)] if SLOW else [])
RELIES = 0.5


@pytest.fixture(scope="module")
def table():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows, t0 = [], time.time()
    try:
        for kind in KINDS:
            for seed in SEEDS:
                model, x, y, k, _ = make(kind, seed)
                for method in METHODS:
                    flags, _ = audit(model, x, y, k, method)
                    rows.append({"kind": kind, "seed": seed, "marker": None, "method": method, "flags": len(flags),
                                 "false": len(flags), "found": None})
            for j, marker in enumerate(MARKERS if SLOW else MARKERS[:2] if kind == "digits" else MARKERS[1:]):
                seed = SEEDS[j % len(SEEDS)]
                model, x, y, k, reliance = make(kind, seed, marker)
                for method in METHODS:
                    flags, _ = audit(model, x, y, k, method)
                    at = [f for f in flags if f["class"] == marker.cls
                          and overlap(f["evidence"]["region"]["pixels"], marker.box()) >= 0.5]
                    rows.append({"kind": kind, "seed": seed, "marker": marker, "method": method, "flags": len(flags),
                                 "false": len(flags) - len(at), "found": bool(at) if reliance >= RELIES else None,
                                 "reliance": reliance})
    finally:
        torch.set_num_threads(threads)
    return rows, time.time() - t0


def rates(rows):
    out = {}
    for m in METHODS:
        clean = [r for r in rows if r["method"] == m and r["marker"] is None]
        planted = [r for r in rows if r["method"] == m and r["found"] is not None]
        out[m] = {"clean_flagged": sum(r["flags"] > 0 for r in clean), "clean": len(clean),
                  "found": sum(r["found"] for r in planted), "planted": len(planted),
                  "away": sum(r["false"] for r in rows if r["method"] == m and r["marker"] is not None)}
    return out


@pytest.mark.slow
def test_rates(table):
    rows, seconds = table
    r = rates(rows)
    print(f"\nshortcut calibration ({'XAIQ_SLOW' if SLOW else 'quick'}: seeds {SEEDS}, {seconds:.0f} s)")
    print(f"{'method':22} {'clean audits flagged':>21} {'planted found':>14} {'flags away':>11}")
    for m, v in r.items():
        print(f"{m:22} {v['clean_flagged']:>14}/{v['clean']:<6} {v['found']:>8}/{v['planted']:<5} {v['away']:>11}")
    for row in rows:
        if row["marker"] is not None:
            mk = row["marker"]
            print(f"  {row['kind']:8} seed {row['seed']} marker {mk.size}px {mk.corner} {mk.colour} x{mk.strength}"
                  f"{' twin' if mk.twin else ''} (reliance {row['reliance']:.2f}) {row['method']}: "
                  f"{'found' if row['found'] else 'missed' if row['found'] is False else 'not relied on'}")
    clean = sum(v["clean_flagged"] for v in r.values())
    total = sum(v["clean"] for v in r.values())
    assert total >= 20 and clean / total <= 1 / 20, r          # at most 1 in 20 clean audits flagged
    assert sum(v["away"] for v in r.values()) <= 1, r        # flags are at the marker
    assert r["saliency"]["found"] >= 0.75 * r["saliency"]["planted"] and r["saliency"]["planted"] >= 3, r
    found = sum(v["found"] for v in r.values())
    assert found >= 0.6 * sum(v["planted"] for v in r.values()), r
