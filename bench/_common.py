"""Shared bits of the explainer benchmarks: argument parsing, timing, the models, and the
baselines they are measured against (the seed's filter loop and LIME pipeline, a bare saliency)."""
from __future__ import annotations

import argparse
import contextlib
import io
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
    p.add_argument("--quick", "--short", action="store_true",
                   help="smaller sizes, a couple of minutes on a 2-core CPU (--short: throughput.py's name)")
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


def cpu_timed(fn, device) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds, all threads) of one call."""
    sync(device)
    t, c = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t, time.process_time() - c


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def median(xs) -> float:
    return float(statistics.median(xs))


def interleaved(fns: dict, repeats: int, device: str, warm=(), limits: dict | None = None) -> dict[str, list[float]]:
    """Each function once per repeat, in turn (a noisy machine slows them alike); the ones in
    `warm` run once before; `limits` caps the repeats of slow baselines."""
    for name in warm:
        fns[name]()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            if r < (limits or {}).get(name, repeats):
                times[name].append(timed(fn, device))
    return times


def food11(device, size: int = 128):
    """The seed's food-11 CNN, random weights (speed does not depend on them), eval mode.
    size != 128: an AdaptiveAvgPool2d(4) before the classifier so it takes any size."""
    from torch import nn

    from worker.models.architectures import Food11CNN

    m = Food11CNN()
    if size != 128:
        m.cnn.append(nn.AdaptiveAvgPool2d(4))
    return m.to(device).eval()


PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "text", "hubble_deep_field", "immunohistochemistry",
          "camera", "coins", "moon", "page"]   # 11 classes: one per photo (grey ones as RGB)


def crop(k: int, size: int = 128, photo_name: str | None = None) -> np.ndarray:
    """A (size, size, 3) float32 crop in [0, 1] of one of skimage's sample photos (`PHOTOS[k % 11]`
    unless `photo_name`), a random square of 50..100% of the short side (seeded by k)."""
    from skimage import data
    from skimage.color import gray2rgb
    from skimage.transform import resize

    img = getattr(data, photo_name or PHOTOS[k % len(PHOTOS)])()
    img = gray2rgb(img) if img.ndim == 2 else img[..., :3]
    rng = np.random.default_rng(k)
    h, w = img.shape[:2]
    side = int(min(h, w) * rng.uniform(0.5, 1.0))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    return resize(img[y:y + side, x:x + side], (size, size), anti_aliasing=True).astype(np.float32)


def trained_food11(steps: int = 40, device="cpu", batch: int = 16, cache: Path | None = ROOT / "bench/out"):
    """The seed's food-11 CNN (PyTorch's default init) trained briefly: `steps` Adam steps
    (lr 1e-3) on crops of 11 sample photos, one class each. Its logits move by units
    across LIME's perturbations, and bf16 can change LIME's answer on it, as on the model
    of the issue. The weights are kept in `cache` (a few seconds to load, about a minute
    to train on 2 cores); eval mode."""
    import torch.nn.functional as F

    from worker.models.architectures import Food11CNN

    torch.manual_seed(0)
    m = Food11CNN()
    file = cache / f"food11-trained-{steps}x{batch}.pt" if cache else None
    if file is not None and file.exists():
        m.load_state_dict(torch.load(file, weights_only=True))
        return m.to(device).eval()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m.train()
    for step in range(steps):
        ks = [step * batch + i for i in range(batch)]
        x = torch.tensor(np.stack([crop(k + 1000) for k in ks])).permute(0, 3, 1, 2)
        y = torch.tensor([k % len(PHOTOS) for k in ks])
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    m.eval()
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(m.state_dict(), file)
    return m.to(device)


def photo(size: int) -> np.ndarray:
    """skimage's astronaut, (size, size, 3) float in [0, 1]."""
    from skimage import data
    from skimage.transform import resize

    return resize(data.astronaut(), (size, size), anti_aliasing=True).astype(np.float32)


def header(name: str, a, **sizes) -> None:
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"cpu x{torch.get_num_threads()} threads"
    print(f"# {name} on {dev}; " + ", ".join(f"{k}={v}" for k, v in sizes.items()) + f"; repeats={a.repeats}")


# --- the baselines ------------------------------------------------------------------------
def saliency_loops(model, xs, ys):
    """(bare, xaiq) over the same batches: a bare forward + autograd.grad(CE, x), the least
    work that yields the input gradient, and xaiq's `saliency`."""
    import torch.nn.functional as F

    import worker.explain as E

    def bare():
        for x, y in zip(xs, ys):
            x = x.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)[0].abs()

    def ours():
        for x, y in zip(xs, ys):
            E.saliency(model, x, y)

    return bare, ours


def seed_filter_explaination(x, model, cnnid, filterid, iteration=100, lr=1):
    """The seed's function (hook on model.cnn[cnnid], Adam on all 4 images, keep [0])."""
    from torch.optim import Adam

    model.eval()
    acts = {}
    hook_handle = model.cnn[cnnid].register_forward_hook(lambda m, i, o: acts.__setitem__("v", o))
    model(x)
    filter_activations = acts["v"][:, filterid].detach().cpu()
    x = x.clone().requires_grad_()
    optimizer = Adam([x], lr=lr)
    for _ in range(iteration):
        optimizer.zero_grad()
        model(x)
        objective = -acts["v"][:, filterid].sum()
        objective.backward()
        optimizer.step()
    hook_handle.remove()
    model.zero_grad(set_to_none=True)
    return filter_activations, x.detach().cpu()[0]


def seed_lime(model, hwc: np.ndarray, samples: int, device, seg, dtype=torch.float32, random_state=None,
              top_labels: int = 5):
    """The seed's pipeline: the `lime` package with batch_size=10 and the seed's classifier_fn
    (it returned logits; lime's cost is the same), its forward under autocast for a reduced
    `dtype` (the same precision as the pipeline it is compared with)."""
    from lime.lime_image import LimeImageExplainer

    def predict(inp):
        with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
            return model(torch.FloatTensor(inp).permute(0, 3, 1, 2).to(device)).float().detach().cpu().numpy()

    with contextlib.redirect_stderr(io.StringIO()):
        return LimeImageExplainer(random_state=random_state).explain_instance(
            hwc.astype(np.double), predict, segmentation_fn=seg, num_samples=samples, batch_size=10,
            top_labels=top_labels)
