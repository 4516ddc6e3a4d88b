"""An audit of 2,000 digit images through the whole single-machine stack: its time,
the items it produced, and the peak memory (VmHWM) of every process of the stack.

    .venv/bin/python bench/audit_2000.py [--images 2000] [--workers 1]
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def dataset_zip(n: int) -> bytes:
    """The 1,797 digits, then shifted copies until n images, one folder per class."""
    from worker.models.digits import digit_images

    images, labels = digit_images()
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(n):
            img, label = images[i % len(images)], labels[i % len(images)]
            if i >= len(images):
                dx, dy = rng.integers(-2, 3, size=2)
                img = Image.fromarray(np.roll(np.asarray(img), (dy, dx), axis=(0, 1)))
            png = io.BytesIO()
            img.save(png, "PNG")
            z.writestr(f"{label}/{i:05d}.png", png.getvalue())
    return buf.getvalue()


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a process and all its descendants (MB)."""
    total = 0.0
    for p in [pid] + descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total = max(total, int(line.split()[1]) / 1024)
        except OSError:
            pass
    return total


def descendants(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out += [int(p.name)] + descendants(int(p.name))
            except (OSError, IndexError):
                pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=1)
    args, _ = ap.parse_known_args()  # run_all.sh passes the explainer flags to every script

    from client.cli import register_digits
    from client.sdk import Client
    from client.stack import Stack

    stack = Stack(Path(tempfile.mkdtemp(prefix="xaiq-audit-")), workers=args.workers, api_port=0, s3_port=0,
                  api_key="bench")
    stack.start()
    try:
        client = Client(stack.api_url, "bench")
        register_digits(client)
        data = dataset_zip(args.images)
        peaks: dict[str, float] = {}
        t0 = time.perf_counter()
        r = client.session.post(f"{client.server}/v1/audits", files={"dataset": ("d.zip", data)},
                                data={"spec": '{"model": "digits-cnn", "methods": {"saliency": {}}}'})
        r.raise_for_status()
        audit = r.json()["id"]
        t_submit = time.perf_counter() - t0
        while True:
            state = client.audit_status(audit)
            for name, proc in stack.procs.items():
                peaks[name] = max(peaks.get(name, 0.0), peak_rss_mb(proc.pid))
            if state["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(1)
        elapsed = time.perf_counter() - t0
        report = client.report(audit)["report"]
        items = sum(1 for it in client.results(audit, per_page=500) if it["status"] == "done")
    finally:
        stack.stop()
    print(f"audit of {args.images} images ({len(data) / 2**20:.1f} MB zip), saliency, {args.workers} worker(s): "
          f"{state['status']} in {elapsed:.1f} s (upload+intake {t_submit:.1f} s); "
          f"{items} items done, report n_images={report['n_images']}, accuracy={report['accuracy']:.4f}, "
          f"{len(report['flags'])} flag(s), report built in {report['meta'].get('report_seconds')} s")
    print("peak RSS (VmHWM, MB) per part of the stack: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))


if __name__ == "__main__":
    main()
