"""What a compute process does with its model, one function per operation the broker may
ask for. Tensors in, arrays out; no storage, no Redis, no network (there is none).

- `unit`: predict a part of a unit's images, check the outputs, run every requested method
  on them in chunks of its measured batch size (one answer per method as soon as it is
  done), and for an audit the unit's partial and per-image fields.
- `report`: an audit's report from its units' partials (asking the broker for the images
  the sanity check and the examples need).
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch

from worker import explain, images
from worker.explain.calibrate import MeasuredSizes


class Misbehaved(Exception):
    """The model broke a rule the service checks on every batch; `reason` is ours (built from
    shapes and counts), safe to show the tenant."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SizeStore:
    """The batch sizes the broker handed over; new measurements are sent back with `done`."""

    def __init__(self, state):
        self.state = state

    def get(self, key: str):
        return self.state.sizes.get(key)

    def set(self, key: str, value: int) -> None:
        self.state.sizes[key] = self.state.new_sizes[key] = int(value)


def run_of(state):
    lm = state.model
    sizes = MeasuredSizes(SizeStore(state), lm.key, budget_s=state.measure_s, run=lm.run()) \
        if state.measure_s > 0 else None
    return lm.run(sizes=sizes)


def checked_probabilities(lm, x: torch.Tensor, run) -> torch.Tensor:
    """softmax of the model's outputs, which must be (N, classes) on every batch."""
    k = len(lm.classes)
    fwd = run.forward(lm.model)
    size = run.batch_size(lm.model, x[0], "predict") if len(x) else 1    # forward-only: the measured size
    out = []
    with torch.no_grad():
        for chunk in x.split(size):
            y = fwd(chunk)
            if not isinstance(y, torch.Tensor) or tuple(y.shape) != (len(chunk), k):
                shape = tuple(y.shape[1:]) if isinstance(y, torch.Tensor) else type(y).__name__
                raise Misbehaved(f"the model's output for a batch is {shape}, not ({k},) for its {k} classes")
            out.append(y.float().softmax(1))
    return torch.cat(out) if out else torch.zeros(0, k)


def as_bytes(pictures: np.ndarray) -> np.ndarray:
    """Pictures in [0, 1] as uint8 (what a PNG holds)."""
    return (np.clip(np.nan_to_num(pictures), 0, 1) * 255).round().astype(np.uint8)


def send_method(state, name: str, r: explain.Explanation, seconds: float, pictures: bool) -> None:
    arrays = {"maps": np.asarray(r.maps, np.float32)}
    if pictures:
        arrays["pictures"] = as_bytes(r.pictures)
        arrays |= {f"extra_picture:{k}": as_bytes(v) for k, v in r.extra_pictures.items()}
    arrays |= {f"extra:{k}": np.asarray(v, np.float32) for k, v in r.extras.items()}
    state.reply({"kind": "method", "name": name, "precision": r.precision, "guard": r.guard, "seconds": seconds},
                arrays)


def unit(state, header: dict, arrays: dict) -> None:
    """header: methods, targets (per image or None), pictures, audit (options, truth,
    indices) or None; arrays: pixels (N, C, H, W) float32 in [0, 1]."""
    lm, run = state.model, run_of(state)
    t0 = time.perf_counter()
    x = torch.from_numpy(images.standardize(np.asarray(arrays["pixels"], np.float32), lm.info)).to(lm.device)
    probs = checked_probabilities(lm, x, run)
    rows = torch.isfinite(probs).all(1).nonzero().flatten().tolist()
    x, probs = x[rows], probs[rows]
    given = header.get("targets")
    targets = torch.tensor([given[i] for i in rows], device=lm.device) if given else probs.argmax(1)
    timings, heatmaps = {"predict": round(time.perf_counter() - t0, 4)}, {}
    state.reply({"kind": "predicted", "rows": rows})
    if rows:
        for name, params in header["methods"].items():
            t1 = time.perf_counter()
            r = explain.run(name, lm.model, x, targets, params, run)
            timings[name] = round(time.perf_counter() - t1, 4)
            heatmaps[name] = r.heatmaps
            send_method(state, name, r, timings[name], header.get("pictures", True))
    out = {"probs": probs.cpu().numpy().astype(np.float32), "targets": targets.cpu().numpy().astype(np.int64)}
    fields: list[dict] = []
    audit = header.get("audit")
    if audit and rows:
        from worker.audit.job import audit_unit

        t2 = time.perf_counter()
        partial, fields = audit_unit(lm, x, probs, heatmaps, [audit["truth"][i] for i in rows],
                                     [audit["indices"][i] for i in rows], audit["options"], header["methods"],
                                     int(audit["images"]), run)
        out["partial"] = np.frombuffer(partial, np.uint8)
        timings["audit"] = round(time.perf_counter() - t2, 4)
    sizes, state.new_sizes = state.new_sizes, {}
    state.reply({"kind": "done", "rows": rows, "timings": timings, "sizes": sizes, "fields": fields}, out)


def report(state, header: dict, arrays: dict) -> None:
    """header: meta, options, methods, partials (how many), images (how many inputs);
    arrays: partial:{i} (each unit's partial). Asks the broker for images by index."""
    from worker.audit.job import build_report

    def fetch(indices: list[int]) -> tuple[np.ndarray, list[int]]:
        """Pixels (n, C, H, W) in [0, 1] of the images that could be read, and their indices."""
        answer, got = state.ask({"need": "images", "indices": [int(i) for i in indices]})
        return np.asarray(got["pixels"], np.float32), [int(i) for i in answer["indices"]]

    partials = [arrays[f"partial:{i}"].tobytes() for i in range(int(header["partials"]))]
    rep, html = build_report(state.model, partials, header["meta"], header["options"], header["methods"],
                             int(header["images"]), fetch, run_of(state))
    state.reply({"kind": "done"}, {"report": np.frombuffer(json.dumps(rep, allow_nan=False).encode(), np.uint8),
                                   "html": np.frombuffer(html.encode(), np.uint8)})


OPS = {"unit": unit, "report": report}
