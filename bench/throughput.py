"""The throughput table: every ratio of issue #11, each against a baseline measured in the
same run (interleaved repeats, medians), printed and written as JSON under bench/results/.

    .venv/bin/python bench/throughput.py                 # full sizes, by hand (~6 min on a 2-core CPU)
    .venv/bin/python bench/throughput.py --short         # CI: small sizes; records, never fails on timing
    bench/run_all.sh --device cuda                       # the whole table on one GPU (< 5 min)

Sections (each skips itself, with the reason in the table, when what it needs is missing):
  saliency   xaiq's saliency vs a bare forward + autograd.grad(CE, x), food-11 CNN batches
  filters    cost per visualised filter: 16 filters in one batch vs the seed's loop
  lime       one food-11 image: the forward rate (as registered, and prepared: batch norm folded,
             NHWC) at each precision; xaiq's LIME vs the forward floor (the same forwards at the best
             batch size + one SLIC) at each precision, and the default settings vs the seed's pipeline
             (the `lime` package, batch_size=10); agreement of reduced precision with fp32
  stream     LIME across a unit's images (one stream of full batches) vs one image at a time
  service    a digits-cnn saliency job end to end (HTTP -> Redis -> Celery -> S3, succeeded) vs the
             same maps computed bare in this process; the device-busy fraction of its units; one
             S3 PUT; and a food-11 audit (saliency + LIME) measured end to end, projected to 10,000 images
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import (food11, interleaved, median, photo, saliency_loops, seed_filter_explaination,  # noqa: E402
                     seed_lime)

ROWS: list[dict] = []
SHORT = False   # --short: sizes too small to judge a target


def record(section: str, name: str, value, unit: str = "", baseline=None, ratio=None, target: str = "",
           met=None, **detail) -> None:
    """One row of the table (and of the JSON); `met` None: no target, or not measurable here.
    The short mode's sizes are too small for the targets (fixed costs dominate): it records
    them as '(full mode)' and judges none."""
    if SHORT and target:
        target, met = f"{target} (full mode)", None
    row = {"section": section, "name": name, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio,
           "target": target, "met": met, **detail}
    ROWS.append(row)
    print(f"  {name}: {fmt(value)} {unit}" + (f"  ratio {fmt(ratio)}" if ratio is not None else "")
          + (f"  target {target}: {'met' if met else 'MISSED'}" if met is not None else ""), flush=True)


def skipped(section: str, why: str) -> None:
    record(section, f"{section}: skipped", None, why=why)


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


# --- saliency and filters ---------------------------------------------------------------
def bench_saliency(a) -> None:
    batch, batches = (128, 8) if a.device.startswith("cuda") else ((8, 2) if a.short else (16, 4))
    model = food11(a.device)
    xs = [torch.rand(batch, 3, 128, 128, device=a.device) for _ in range(batches)]
    ys = [torch.randint(0, 11, (batch,), device=a.device) for _ in range(batches)]

    bare, ours = saliency_loops(model, xs, ys)
    t = interleaved({"bare": bare, "xaiq": ours}, a.repeats, a.device, warm=("bare", "xaiq"))
    ratio = median(t["xaiq"]) / median(t["bare"])
    record("saliency", f"saliency, {batches} batches of {batch} food-11 images: xaiq / bare fwd+grad(x)",
           batch * batches / median(t["xaiq"]), "images/s", baseline=batch * batches / median(t["bare"]), ratio=ratio,
           target="<= 1.15", met=ratio <= 1.15, runs=t)


def bench_filters(a) -> None:
    import worker.explain as E

    iterations, n_filters, seed_filters = (3, 4, 1) if a.short else (20, 16, 2)
    model = food11(a.device)
    x = torch.rand(4, 3, 128, 128, device=a.device)

    def seed():
        for k in range(seed_filters):
            seed_filter_explaination(x, model, 15, k, iterations)

    def ours():
        E.filter_explanation(model, x, "cnn.15", list(range(n_filters)), iterations, style="seed")

    t = interleaved({"seed": seed, "xaiq": ours}, a.repeats, a.device, warm=("xaiq",))
    per_seed, per_ours = median(t["seed"]) / seed_filters, median(t["xaiq"]) / n_filters
    record("filters", f"filters, {n_filters} of cnn.15, {iterations} steps: seed loop / xaiq, per filter", per_ours,
           "s/filter", baseline=per_seed, ratio=per_seed / per_ours, target=">= 4 (cheaper)",
           met=per_seed / per_ours >= 4, runs=t)


# --- LIME -------------------------------------------------------------------------------
def weights_of(e, label: int) -> np.ndarray:
    w = np.zeros(int(e.segments.max()) + 1)
    for s, v in e.local_exp[label]:
        w[s] = v
    return w


def lime_precision(a, model, x, hwc, seg, run, p: str, samples: int, seed_fn) -> dict:
    """xaiq's LIME at precision p vs the forward floor at p (and vs the seed, when given)."""
    import worker.explain as E
    from worker.explain.calibrate import candidates, measure
    from worker.explain.precision import DTYPES

    fwd = run.forward(model, DTYPES[p])
    with torch.inference_mode():
        bs, rates = measure(fwd, x, candidates(x.device, x), repeats=3, budget_s=a.budget)
    record("lime", f"the floor's batch size at {p} (a sweep of the prepared forward)", bs, "",
           rates={str(k): round(v, 1) for k, v in rates.items()})
    xb = x[None].repeat(bs, 1, 1, 1)
    out = {}

    def floor():
        seg(hwc.astype(np.float64))
        with torch.inference_mode():
            for i in range(0, samples, bs):
                fwd(xb[:min(bs, samples - i)])

    def ours():
        out["e"] = E.lime(model, x, num_samples=samples, seed=0, segmentation_fn=seg, precision=p, run=run)

    fns = {"floor": floor, "xaiq": ours} | ({"seed": seed_fn} if seed_fn else {})
    t = interleaved(fns, a.repeats, a.device, warm=("floor", "xaiq"), limits={"seed": a.seed_repeats})
    return {"times": t, "e": out["e"], "batch": bs}


def bench_lime(a) -> dict:
    from worker.explain.calibrate import MeasuredSizes, MemoryStore
    from worker.explain.context import RunContext
    from worker.explain.lime import slic_segments
    from worker.explain.precision import NAMES, resolve
    from worker.models.prepare import Options, prepare

    model, plain = trained_like_food11(a.device), trained_like_food11(a.device)
    prepared = RunContext(prepared=prepare(model, Options(compile=a.compile)))
    hwc = photo(128)
    x = torch.tensor(hwc).permute(2, 0, 1).to(a.device)
    seg = lambda img: slic_segments(img, 100, 1, 1)  # noqa: E731  the same segmentation for all
    run = RunContext(sizes=MeasuredSizes(MemoryStore(), "food11", budget_s=a.budget, run=prepared),
                     prepared=prepared.prepared)
    forward_rates(a, model, plain, x, run)
    auto = NAMES[resolve("auto", a.device)]
    try:
        import lime  # noqa: F401
        seed_fn = lambda: seed_lime(plain, hwc, a.samples, a.device, seg)  # noqa: E731
    except ImportError:
        seed_fn = None
        skipped("lime", "the `lime` package is not installed: no seed pipeline")
    runs = {}
    for p in ["fp32", "bf16"] + (["fp16"] if a.device.startswith("cuda") else []):
        n = a.samples if p == auto else a.reduced_samples
        runs[p] = lime_precision(a, model, x, hwc, seg, run, p, n, seed_fn if p == auto else None) | {"n": n}
        t = runs[p]["times"]
        ratio = median(t["xaiq"]) / median(t["floor"])
        official = p == auto
        record("lime", f"LIME {p}, {n} samples: xaiq / forward floor{' (the default: auto)' if official else ''}",
               median(t["xaiq"]), "s/image", baseline=median(t["floor"]), ratio=ratio,
               target="<= 1.15" if official else "", met=(ratio <= 1.15) if official else None, runs=t,
               batch=runs[p]["batch"], scored_in=runs[p]["e"].precision)
        if official and seed_fn:
            goal = 50 if a.device.startswith("cuda") else 2.5
            speed = median(t["seed"]) / median(t["xaiq"])
            record("lime", f"LIME default ({auto}), {n} samples: seed pipeline / xaiq", median(t["xaiq"]), "s/image",
                   baseline=median(t["seed"]), ratio=speed, target=f">= {goal}", met=speed >= goal)
    agreement(a, model, x, seg, runs, run)
    return {"seed_s": median(runs[auto]["times"]["seed"]) if seed_fn else None}


def forward_rates(a, model, plain, x, run) -> None:
    """The food-11 forward, interleaved at one batch size (the prepared model's best): as
    registered (NHWC inputs), prepared (batch norm folded, NHWC weights), compiled (full mode),
    and prepared at each reduced precision."""
    from worker.explain.calibrate import candidates, measure
    from worker.explain.context import plain as as_registered
    from worker.explain.precision import DTYPES
    from worker.models.prepare import Options, Prepared

    prepared = run.forward(model)
    with torch.inference_mode():
        bs, _ = measure(prepared, x, candidates(x.device, x), repeats=3, budget_s=a.budget)
    fwds = {"as registered (NHWC inputs)": as_registered(plain, torch.float32),
            "prepared (BN folded, NHWC weights)": prepared}
    fwds |= {f"prepared, {p}": run.forward(model, DTYPES[p]) for p in (["bf16", "fp16"] if a.device.startswith("cuda")
                                                                      else ["bf16"])}
    if not a.short and a.compile == "off":
        t0 = time.perf_counter()
        fwds["prepared and compiled (XAIQ_COMPILE=on)"] = compiled = Prepared(plain, Options(compile="on"))(torch.float32)
        with torch.inference_mode():
            compiled(x[None].repeat(bs, 1, 1, 1))
        record("lime", "compiling the food-11 forward (once per worker and model)", time.perf_counter() - t0, "s")
    xb = x[None].repeat(bs, 1, 1, 1)
    calls = max(1, int(2 * bs // 8)) if a.device == "cpu" else 20

    def run(f):
        def go():
            with torch.inference_mode():
                for _ in range(calls):
                    f(xb)
        return go
    t = interleaved({k: run(f) for k, f in fwds.items()}, a.repeats + 2, a.device, warm=tuple(fwds))
    base = median(t["as registered (NHWC inputs)"])
    for k, v in t.items():
        record("lime", f"food-11 forward, batch {bs}: {k}", bs * calls / median(v), "images/s",
               ratio=base / median(v), runs=v)


def agreement(a, model, x, seg, runs, run) -> None:
    """How closely reduced-precision LIME agrees with fp32 (same seed), beside two fp32 seeds."""
    import worker.explain as E

    for p, r in runs.items():
        if p == "fp32":
            continue
        base = E.lime(model, x, num_samples=r["n"], seed=0, segmentation_fn=seg, precision="fp32", run=run)
        other = E.lime(model, x, num_samples=r["n"], seed=1, segmentation_fn=seg, precision="fp32", run=run)
        lab = base.top_labels[0]
        seeds = float(np.corrcoef(weights_of(base, lab), weights_of(other, lab))[0, 1])
        ours = r["e"]
        if ours.precision != p or lab not in ours.local_exp:
            record("lime", f"agreement of {p} with fp32", None, why=f"scored in {ours.precision} (the guard)")
            continue
        corr = float(np.corrcoef(weights_of(base, lab), weights_of(ours, lab))[0, 1])
        record("lime", f"agreement: corr(LIME {p}, fp32) same seed, vs corr(two fp32 seeds), {r['n']} samples",
               corr, baseline=seeds, target=">= the two seeds'", met=corr >= seeds)


def bench_food_unit(a, seed_s: float | None) -> None:
    """LIME per food-11 image inside a unit (one stream, segmentation beside the device) vs the
    seed's pipeline per image: the GPU target."""
    import worker.explain as E
    from worker.explain.calibrate import MeasuredSizes, MemoryStore
    from worker.explain.context import RunContext
    from worker.models.prepare import prepare

    n = a.food_unit
    if not n or seed_s is None:
        return skipped("food unit", "no seed pipeline timing" if n else "--food-unit 0")
    model = trained_like_food11(a.device)
    prepared = RunContext(prepared=prepare(model))
    x = torch.tensor(np.stack([crop(k) for k in range(n)])).permute(0, 3, 1, 2).to(a.device)
    run = RunContext(sizes=MeasuredSizes(MemoryStore(), "food11", budget_s=a.budget, run=prepared),
                     prepared=prepared.prepared)

    def unit():
        E.lime_many(model, x, num_samples=a.samples, seed=0, run=run)

    t = interleaved({"xaiq": unit}, a.repeats, a.device, warm=("xaiq",))
    per = median(t["xaiq"]) / n
    goal = 50 if a.device.startswith("cuda") else 2.5
    record("lime", f"LIME per food-11 image in a unit of {n} ({a.samples} samples, default): seed / xaiq", per,
           "s/image", baseline=seed_s, ratio=seed_s / per, target=f">= {goal}", met=seed_s / per >= goal, runs=t)


def crop(k: int, size: int = 128) -> np.ndarray:
    """A photo-like (size, size, 3) image in [0, 1]: crops of skimage's sample photos."""
    from skimage import data
    from skimage.transform import resize

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    img = photos[k % len(photos)]
    rng = np.random.default_rng(k)
    h, w = img.shape[:2]
    side = int(min(h, w) * rng.uniform(0.5, 1.0))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    return resize(img[y:y + side, x:x + side], (size, size), anti_aliasing=True).astype(np.float32)


def bench_stream(a, seed_s: float | None) -> None:
    """A unit of digits at the service's LIME defaults: one stream vs image by image."""
    import worker.explain as E
    from worker.explain.calibrate import MeasuredSizes, MemoryStore
    from worker.explain.context import RunContext
    from worker.models.digits import MEAN, STD, digit_images
    from worker.models.prepare import prepare

    model = digits_model(a.device)
    prepared = RunContext(prepared=prepare(model))
    n, samples = (8, 200) if a.short else (32, 1000)
    ims, _ = digit_images(n)
    x = ((torch.tensor(np.stack([np.asarray(i, np.float32) / 255 for i in ims]))[:, None] - MEAN) / STD).to(a.device)
    with torch.no_grad():
        y = model(x).argmax(1).tolist()
    run = RunContext(sizes=MeasuredSizes(MemoryStore(), "digits", budget_s=a.budget, run=prepared),
                     prepared=prepared.prepared)
    out = {}

    def stream():
        out["s"] = E.lime_many(model, x, [[t] for t in y], num_samples=samples, seed=0, run=run)

    def loop():
        out["l"] = [E.lime(model, x[i], num_samples=samples, seed=0, labels=[y[i]], run=run) for i in range(n)]

    t = interleaved({"loop": loop, "stream": stream}, a.repeats, a.device, warm=("stream",))
    diff = max(float(np.abs(weights_of(s, t_) - weights_of(lo, t_)).max()) for s, lo, t_ in zip(out["s"], out["l"], y))
    record("stream", f"LIME across {n} digits ({samples} samples): image by image / one stream",
           median(t["stream"]) / n, "s/image", baseline=median(t["loop"]) / n,
           ratio=median(t["loop"]) / median(t["stream"]), max_weight_difference=diff, runs=t)


def trained_like_food11(device: str = "cpu"):
    """The food-11 CNN with He-initialised weights: its logits move by units across LIME's
    perturbations, as a trained network's do (PyTorch's default init leaves outputs that move
    by 1e-4, which bf16 cannot resolve: the precision guard would rightly keep fp32). Speed
    does not depend on the weights."""
    from torch import nn

    torch.manual_seed(0)
    m = food11("cpu")
    for mod in m.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
            nn.init.zeros_(mod.bias)
    return m.to(device).eval()


def digits_model(device):
    from safetensors.torch import load_file

    from worker.models.architectures import DigitsCNN
    from worker.models.digits import WEIGHTS

    m = DigitsCNN()
    m.load_state_dict(load_file(WEIGHTS / "digits-cnn.safetensors"))
    return m.to(device).eval()


# --- the service ------------------------------------------------------------------------
def service_missing() -> str | None:
    if not shutil.which("redis-server"):
        return "no redis-server on this machine"
    try:
        from client.stack import weed_binary

        weed_binary()
    except Exception as e:  # noqa: BLE001 - the reason goes into the table
        return f"no S3 server: {e}"
    return None


def bench_service(a) -> None:
    why = service_missing() if not a.no_service else "--no-service"
    if why:
        skipped("service", why)
        return audit_compute(a)
    from client.cli import register_digits
    from client.sdk import Client
    from client.stack import Stack

    env = {"XAIQ_DEVICE": a.device, "XAIQ_UNIT_SIZE": str(a.unit_size), "XAIQ_BATCH_MEASURE_S": str(a.budget),
           "XAIQ_MAX_TENANT_GFLOP": "1e12", "XAIQ_MAX_JOB_GFLOP": "1e12"}
    stack = Stack(Path(tempfile.mkdtemp(prefix="xaiq-bench-")), workers=1, api_port=0, s3_port=0, redis_port=0,
                  api_key="bench", torch_threads=a.service_threads, extra_env=env)
    t0 = time.perf_counter()
    stack.start()
    try:
        client = Client(stack.api_url, "bench")
        register_digits(client)
        print(f"   (stack up and digits-cnn registered in {time.perf_counter() - t0:.1f} s)", flush=True)
        overhead(a, stack, client)
        boundary(a)
        flat_memory(a, stack, client)
        s3_put(a, stack)
        audit_projection(a, client)
    finally:
        stack.stop()


class Watch:
    """What the service costs while a job runs: the S3 server's own count of requests it
    served, and the peak resident memory of the API's processes and of the worker's (the
    Celery processes, their zygote and compute processes), sampled every 0.1 s."""

    def __init__(self, stack):
        import threading

        self.stack, self.peaks, self.stop = stack, {"api": 0.0, "worker": 0.0}, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def s3_requests(self) -> float:
        import requests

        text = requests.get(self.stack.s3_metrics_url, timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("SeaweedFS_s3_request_total{") and 'bucket="xaiq"' in line)

    def _tree(self, pid: int) -> list[int]:
        out, todo = [], [pid]
        while todo:
            p = todo.pop()
            out.append(p)
            try:
                with open(f"/proc/{p}/task/{p}/children") as f:
                    todo += [int(c) for c in f.read().split()]
            except OSError:
                pass
        return out

    def _rss_mb(self, pids: list[int]) -> float:
        from worker.confine import resident_mb

        return sum(resident_mb(p) for p in pids)

    def _sample(self) -> None:
        while not self.stop.is_set():
            for part, name in (("api", "api"), ("worker", "worker0")):
                proc = self.stack.procs.get(name)
                if proc is not None:
                    self.peaks[part] = max(self.peaks[part], self._rss_mb(self._tree(proc.pid)))
            self.stop.wait(0.1)

    def __enter__(self) -> "Watch":
        self.requests0 = self.s3_requests()
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        self.thread.join()
        self.requests = self.s3_requests() - self.requests0


def stored_objects(stack, tenant_root: str, job: str) -> int:
    st = stack.storage()
    return sum(len(st.list(f"{tenant_root}{part}/{job}/")) for part in ("inputs", "jobs", "audits"))


def overhead(a, stack, client) -> None:
    """The digits saliency job end to end vs the same maps computed bare in this process; what it
    cost in S3 requests, stored objects and memory."""
    import worker.explain as E
    from client.cli import write_digit_samples
    from worker import images as imgs
    from worker.models.digits import manifest

    paths = write_digit_samples(stack.root / "samples", a.images)
    images = [(p.name, p.read_bytes()) for p in paths]
    info = manifest()
    model = digits_model(a.device)
    x = torch.from_numpy(imgs.standardize(np.stack([imgs.decode(b, info, 2**31)[0] for _, b in images]), info))
    x = x.to(a.device)
    with torch.no_grad():
        y = model(x).argmax(1)
    jobs, posted, watches = [], [], []

    def e2e():
        t0 = time.perf_counter()
        with Watch(stack) as w:
            job = client.submit(images, model="digits-cnn", methods={"saliency": {}})
            posted.append(time.perf_counter() - t0)
            assert client.wait(job, poll=0.02, timeout=900)["status"] == "succeeded"
        jobs.append(job)
        watches.append(w)

    def bare():
        for xs, ys in zip(x.split(32), y.split(32)):
            E.run("saliency", model, xs, ys)

    threads = torch.get_num_threads()
    torch.set_num_threads(a.service_threads)   # the worker's threads
    try:
        client.wait(client.submit(images[:64], model="digits-cnn", methods={"saliency": {}}), poll=0.05)
        t = interleaved({"e2e": e2e, "bare": bare}, max(1, a.repeats - 1), a.device, warm=("bare",))
    finally:
        torch.set_num_threads(threads)
    n, ratio = len(images), median(t["e2e"]) / median(t["bare"])
    record("service", f"{n}-image digits-cnn saliency job end to end / bare computation", median(t["e2e"]), "s",
           baseline=median(t["bare"]), ratio=ratio, target="<= 3", met=ratio <= 3, runs=t,
           post_s=[round(p, 3) for p in posted], threads=a.service_threads)
    record("service", "S3 requests per image (counted by the S3 server, the whole job)",
           median([w.requests for w in watches]) / n, "requests")
    objects = stored_objects(stack, "tenants/admin/", jobs[-1])   # the bench's key is the admin key
    record("service", "objects stored per image (the job's inputs, results and manifest)", objects / n, "objects",
           target="< 0.25", met=objects / n < 0.25, objects=objects)
    record("service", "peak RSS during the job: API processes / worker processes (with its compute process)",
           median([w.peaks["api"] for w in watches]), "MiB", worker_mb=median([w.peaks["worker"] for w in watches]))
    items = [it for it, _ in zip(client.results(jobs[-1], per_page=200), range(256))]
    busy = [it["timings"]["device_busy"] for it in items if "device_busy" in it.get("timings", {})]
    record("service", "device busy in a unit of the job (median)", median(busy) if busy else None, "fraction")


def tiny_pngs(n: int) -> list[tuple[str, bytes]]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(buf, "PNG", compress_level=1)
        out.append((f"t{k:06d}.png", buf.getvalue()))
    return out


def flat_memory(a, stack, client) -> None:
    """Jobs of tiny images at two sizes (10,000 and 100,000; --short 1,000 and 5,000): the API's
    and the worker's peak memory stay flat, the time grows linearly."""
    small, large = (1000, 5000) if a.short else (10000, 100000)
    pngs = tiny_pngs(large)
    seen = {}
    for n in (small, large):
        t0 = time.perf_counter()
        with Watch(stack) as w:
            job = client.submit(pngs[:n], model="digits-cnn", methods={"saliency": {}}, pictures=False)
            assert client.wait(job, poll=0.2, timeout=3600)["status"] == "succeeded"
        seen[n] = (time.perf_counter() - t0, w.peaks["api"], w.peaks["worker"], w.requests)
        record("service", f"a {n}-image job of 8x8 images (saliency, no pictures) end to end", seen[n][0], "s",
               api_peak_mb=round(w.peaks["api"], 1), worker_peak_mb=round(w.peaks["worker"], 1),
               s3_requests=w.requests)
    (ts, api_s, wk_s, _), (tl, api_l, wk_l, _) = seen[small], seen[large]
    record("service", f"time of {large} / time of {small} images (linear: {large / small:g})", tl / ts, "",
           target=f"<= {1.25 * large / small:g}", met=tl / ts <= 1.25 * large / small)
    record("service", f"API peak RSS, {large} / {small} images (flat: 1)", api_l / api_s, "", target="<= 1.25",
           met=api_l / api_s <= 1.25, small_mb=round(api_s, 1), large_mb=round(api_l, 1))
    record("service", f"worker peak RSS, {large} / {small} images (flat: 1)", wk_l / wk_s, "", target="<= 1.25",
           met=wk_l / wk_s <= 1.25, small_mb=round(wk_s, 1), large_mb=round(wk_l, 1))


def boundary(a) -> None:
    """What the broker/compute split costs: a 1,024-image unit's prediction and saliency (maps
    and pictures) through a confined compute process (pixels and results over its channel) vs
    the same work in this process, same threads, interleaved."""
    from worker import explain as E
    from worker.compute.client import Budget, ComputePool
    from worker.compute.ops import as_bytes, checked_probabilities
    from worker.explain.calibrate import MeasuredSizes, MemoryStore
    from worker.images import standardize
    from worker.models import digits
    from worker.models.loading import LoadedModel, build_model
    from worker.models.prepare import prepare

    info = {**digits.manifest(), "format": "safetensors", "name": "digits-cnn", "version": "bench"}
    data = (digits.WEIGHTS / "digits-cnn.safetensors").read_bytes()
    rng = np.random.default_rng(0)
    pixels = rng.random((a.images, 1, 32, 32), dtype=np.float32)
    model = build_model(info, data)
    lm = LoadedModel(model, info, torch.device("cpu"), prepare(model))
    store = MemoryStore()
    run = lm.run(sizes=MeasuredSizes(store, "digits", budget_s=a.budget, run=lm.run()))
    pool = ComputePool(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(a.service_threads)
    try:
        proc = pool.get(("bench", "", "digits-cnn", "bench"), info, lambda: data,
                        lambda: {"device": "cpu", "options": {}, "sizes": {}, "measure_s": a.budget},
                        Budget(600, 8192), threads=a.service_threads)
        header = {"op": "unit", "methods": {"saliency": {}}, "pictures": True, "targets": None, "audit": None}

        def here():
            x = torch.from_numpy(standardize(pixels, info))
            probs = checked_probabilities(lm, x, run)
            r = E.run("saliency", model, x, probs.argmax(1), {}, run)
            as_bytes(r.pictures), np.asarray(r.maps, np.float32)

        def there():
            for _ in proc.call(header, {"pixels": pixels}, Budget(600, 8192)):
                pass
        here(), there()   # each measures its batch sizes once
        t = interleaved({"in this process": here, "through the compute process": there}, a.repeats + 2, "cpu")
    finally:
        torch.set_num_threads(threads)
        pool.close()
    ratio = median(t["through the compute process"]) / median(t["in this process"])
    record("service", f"a {a.images}-image unit's prediction and saliency through the confined compute process / "
           "in the broker's own process", median(t["through the compute process"]), "s",
           baseline=median(t["in this process"]), ratio=ratio, target="<= 1.05", met=ratio <= 1.05, runs=t)


def s3_put(a, stack) -> None:
    """What one stored object costs here (8 threads, 600 bytes): the floor under a unit's writes."""
    from concurrent.futures import ThreadPoolExecutor

    st = stack.storage(patient=True)
    data, n = os.urandom(600), 100 if a.short else 400
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: st.put(f"bench/warm{i}", data), range(20)))
        t0 = time.perf_counter()
        list(pool.map(lambda i: st.put(f"bench/{i}", data), range(n)))
    record("service", "one S3 PUT (8 threads in parallel, loopback)", (time.perf_counter() - t0) / n * 1000, "ms")


def dataset_zip(n: int, classes: list[str]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k in range(n):
            png = io.BytesIO()
            Image.fromarray((crop(k) * 255).astype(np.uint8)).save(png, "PNG")
            z.writestr(f"{classes[k % len(classes)]}/{k:05d}.png", png.getvalue())
    return buf.getvalue()


def audit_projection(a, client) -> None:
    """A food-11 audit (saliency + LIME) of `audit_images` through the service, projected to 10,000."""
    from safetensors.torch import save

    n = a.audit_images
    if not n:
        return skipped("audit", "--audit-images 0")
    classes = [f"class{k}" for k in range(11)]
    spec = {"name": "food11-bench", "architecture": "food11-cnn", "input": {"channels": 3, "height": 128, "width": 128},
            "mean": [0, 0, 0], "std": [1, 1, 1], "classes": classes}
    info = client.register_model(spec, save(trained_like_food11().state_dict()), replace=True)
    assert info["status"] == "ready", info
    # Max-sensitivity re-explains a fixed sample of the dataset (8 images, 10 copies each) whatever
    # its size: a cost like the report's, which a per-image projection must not multiply.
    opts = {"faithfulness_steps": a.audit_steps, "sanity_sample": a.sanity_sample, "shortcuts": True,
            "sensitivity_sample": 0}
    body = {"model": "food11-bench", "methods": {"saliency": {}, "lime": {"num_samples": a.audit_samples}},
            "options": opts, **({"unit_size": a.unit_size} if a.unit_size else {})}
    data = dataset_zip(n, classes)
    t0 = time.perf_counter()
    r = client.session.post(f"{client.server}/v1/audits", files={"dataset": ("d.zip", data)},
                            data={"spec": json.dumps(body)})
    r.raise_for_status()
    audit = r.json()["id"]
    state = client.wait(audit, poll=0.2, timeout=3600, path="/v1/audits")
    total = time.perf_counter() - t0
    report = client.report(audit)["report"]
    report_s = float(report["meta"].get("report_seconds") or 0)
    projected = (total - report_s) * 10000 / n + report_s
    items = [it for it, _ in zip(client.results(audit, per_page=200), range(256))]
    busy = [it["timings"]["device_busy"] for it in items if "device_busy" in it.get("timings", {})]
    record("audit", f"food-11 audit of {n} images (saliency + LIME {a.audit_samples} samples, {a.audit_steps} "
           "deletion/insertion steps, max-sensitivity off), end to end", total, "s",
           status=state["status"], report_s=report_s, sanity_sample=a.sanity_sample, per_image_s=(total - report_s) / n)
    record("audit", "the same audit projected to 10,000 images (one worker)", projected / 3600, "hours")
    record("audit", "device busy in a food-11 audit unit (median)", median(busy) if busy else None, "fraction")


def audit_compute(a) -> None:
    """Without the service: an audit's device work alone (saliency, LIME and the deletion/insertion
    curves of each unit, no storage, no report), measured and projected to 10,000 images."""
    import worker.explain as E
    from worker.audit import unit_partial
    from worker.audit.faithfulness import choose_for_curves
    from worker.explain.calibrate import MeasuredSizes, MemoryStore
    from worker.explain.context import RunContext
    from worker.models.prepare import prepare

    n = a.audit_images
    if not n:
        return skipped("audit", "--audit-images 0")
    model = trained_like_food11(a.device)
    prepared = RunContext(prepared=prepare(model))
    run = RunContext(sizes=MeasuredSizes(MemoryStore(), "food11", budget_s=a.budget, run=prepared),
                     prepared=prepared.prepared)
    x = torch.tensor(np.stack([crop(k) for k in range(n)])).permute(0, 3, 1, 2).to(a.device)
    methods = {"saliency": {}, "lime": {"num_samples": a.audit_samples}}
    t0 = time.perf_counter()
    for s in range(0, n, a.unit_size):
        xs = x[s:s + a.unit_size]
        with torch.no_grad():
            probs = model(xs).softmax(1)
        heat = {m: E.run(m, model, xs, probs.argmax(1), p, run).heatmaps for m, p in methods.items()}
        with torch.inference_mode():
            fwd, dtype = choose_for_curves(model, "auto", xs[:16], run)
            unit_partial(xs, probs.argmax(1).tolist(), list(range(s, s + len(xs))), heat,
                         lambda z: fwd(z).softmax(1), n_classes=11, steps=a.audit_steps, probs=probs,
                         batch_size=run.batch_size(model, xs[0], "faithfulness", dtype))
    total = time.perf_counter() - t0
    record("audit", f"food-11 audit's device work, {n} images (saliency + LIME {a.audit_samples} samples, "
           f"{a.audit_steps} steps; no service here)", total, "s", per_image_s=total / n)
    record("audit", "the same projected to 10,000 images (device work only)", total * 10000 / n / 3600, "hours")


# --- the table --------------------------------------------------------------------------
def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--short", "--quick", action="store_true",
                   help="CI: small sizes, about a minute on a 2-core CPU (--quick: run_all.sh's old name)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (3; --short 2)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of this process (torch's default)")
    p.add_argument("--service-threads", type=int, default=1, help="torch threads of the worker and the bare run")
    p.add_argument("--images", type=int, default=None, help="images of the saliency job (1024; --short 128)")
    p.add_argument("--unit-size", type=int, default=0, help="XAIQ_UNIT_SIZE of the service (0: its default, sized by cost)")
    p.add_argument("--samples", type=int, default=None, help="LIME samples (1000; --short 32)")
    p.add_argument("--reduced-samples", type=int, default=None,
                   help="LIME samples at a precision the device does not run fast (200; --short 8; GPU 1000)")
    p.add_argument("--food-unit", type=int, default=None, help="food-11 images of the LIME unit (GPU 32, CPU 0)")
    p.add_argument("--audit-images", type=int, default=None, help="images of the audit (GPU 512; CPU 4; --short 2)")
    p.add_argument("--audit-samples", type=int, default=None, help="LIME samples in the audit (1000; --short 16)")
    p.add_argument("--audit-steps", type=int, default=None, help="the audit's faithfulness steps (16; --short 4)")
    p.add_argument("--sanity-sample", type=int, default=None, help="the audit's sanity sample (GPU 16; CPU 0: LIME's sanity check alone takes minutes there)")
    p.add_argument("--budget", type=float, default=None, help="seconds one batch-size measurement may take, here and in the worker (8; --short 1)")
    p.add_argument("--seed-repeats", type=int, default=1, help="runs of the seed's (slow) LIME pipeline")
    p.add_argument("--compile", default="off", choices=["off", "on", "cuda-graphs"], help="XAIQ_COMPILE for LIME")
    p.add_argument("--no-service", action="store_true", help="skip the rows that start Redis, S3, API and a worker")
    p.add_argument("--only", default="", help="comma-separated sections: saliency,filters,lime,stream,service")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    return defaults(p.parse_args())


def defaults(a: argparse.Namespace) -> argparse.Namespace:
    gpu = a.device.startswith("cuda")
    pick = lambda v, full, short, cuda=None: v if v is not None else (short if a.short else (cuda if gpu and cuda is not None else full))  # noqa: E731,E501
    a.repeats = pick(a.repeats, 3, 2)
    a.images = pick(a.images, 1024, 128)
    a.samples = pick(a.samples, 1000, 32)
    a.reduced_samples = pick(a.reduced_samples, 200, 8, 1000)
    a.food_unit = pick(a.food_unit, 0, 0, 32)
    a.audit_images = pick(a.audit_images, 4, 2, 512)
    a.audit_samples = pick(a.audit_samples, 1000, 16)
    a.audit_steps = pick(a.audit_steps, 16, 4)
    a.sanity_sample = pick(a.sanity_sample, 0, 0, 16)
    a.budget = pick(a.budget, 8.0, 1.0)
    if a.threads:
        torch.set_num_threads(a.threads)
    return a


def meta(a) -> dict:
    from worker.explain.precision import NAMES, cpu_features, resolve

    f = cpu_features()
    return {"device": torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else platform.processor()
            or f.get("cpu_name", "cpu"), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "avx512_bf16": f.get("avx512_bf16"), "amx_bf16": f.get("amx_bf16"), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "auto_precision": NAMES[resolve("auto", a.device)],
            "mode": "short" if a.short else "full", "args": vars(a), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def table() -> str:
    lines = ["| section | row | measured | baseline | ratio | target | met |", "|---|---|---|---|---|---|---|"]
    for r in ROWS:
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['section']} | {r['name']}{' (' + r['why'] + ')' if r.get('why') else ''} | "
                     f"{fmt(r['value'])} {r['unit']} | {fmt(r['baseline'])} | {fmt(r['ratio'])} | {r['target']} | {met} |")
    return "\n".join(lines)


def main() -> None:
    global SHORT
    a = parse()
    SHORT = a.short
    m = meta(a)
    print(f"# throughput on {m['device']} ({m['cpu_capability']}, {m['threads']} threads), auto precision = "
          f"{m['auto_precision']}, {m['mode']} mode", flush=True)
    only = set(filter(None, a.only.split(",")))
    seed_s = None
    t0 = time.perf_counter()
    for name, fn in [("saliency", bench_saliency), ("filters", bench_filters), ("lime", bench_lime),
                     ("stream", bench_stream), ("service", bench_service)]:
        if only and name not in only:
            continue
        print(f"== {name}", flush=True)
        t1 = time.perf_counter()
        try:
            if name == "lime":
                seed_s = fn(a)["seed_s"]
                bench_food_unit(a, seed_s)
            elif name == "stream":
                fn(a, seed_s)
            else:
                fn(a)
        except Exception as e:  # noqa: BLE001 - a section that breaks is a row, the rest still runs
            record(name, f"{name}: failed", None, why=f"{type(e).__name__}: {e}"[:300])
        print(f"   ({time.perf_counter() - t1:.1f} s)", flush=True)
    m["seconds"] = round(time.perf_counter() - t0, 1)
    print("\n" + table())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"throughput-{a.device.replace(':', '')}-{m['mode']}.json"
    path.write_text(json.dumps({"meta": m, "rows": ROWS}, indent=1, default=str))
    print(f"\nwritten {path} ({m['seconds']} s)")


if __name__ == "__main__":
    main()
