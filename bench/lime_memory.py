"""Peak resident memory of LIME at 1000 samples on a 224x224 image (food-11 CNN with an
adaptive pool so it takes 224x224), measured as ru_maxrss of a fresh subprocess.

Target: < 2.5 GB.
    .venv/bin/python bench/lime_memory.py [--quick] [--device cuda]
"""
from __future__ import annotations

import subprocess
import sys

from _common import args, header

CHILD = r"""
import resource, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import torch
from _common import food11, photo
import worker.explain as E
torch.set_num_threads({threads})
model = food11({dev!r}, 224)
x = torch.tensor(photo(224)).permute(2, 0, 1).to({dev!r})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
r = E.lime(model, x, num_samples={samples}, seed=0)
print(f"{{time.perf_counter() - t:.2f}} {{base / 1024:.0f}} {{len(r.top_labels)}} "
      f"{{torch.cuda.max_memory_allocated() / 2**20 if {dev!r}.startswith('cuda') else 0:.0f}}")
"""


def main() -> None:
    from _common import ROOT

    a = args(__doc__, samples=1000)
    if a.quick:
        a.samples = 300
    import torch
    header("lime memory", a, model="food11-cnn + AdaptiveAvgPool2d(4)", size=224, samples=a.samples)
    code = CHILD.format(root=str(ROOT), bench=str(ROOT / "bench"), dev=a.device, samples=a.samples,
                        threads=torch.get_num_threads())
    p = subprocess.run([sys.executable, "-c", code + "\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                       capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stderr)
    line, peak = p.stdout.strip().splitlines()[-2:]
    secs, before, _, gpu = line.split()
    peak_mb = int(peak) / 1024
    print(f"peak RSS {peak_mb:.0f} MB (after imports + model: {before} MB); LIME took {secs} s; "
          f"GPU peak {gpu} MB")
    print(f"peak RSS = {peak_mb / 1024:.2f} GB  (target < 2.5 GB): {'met' if peak_mb < 2560 else 'MISSED'}")


if __name__ == "__main__":
    main()
