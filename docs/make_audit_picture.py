"""The README's audit picture: `xaiq audit` (local stack, no server) on the digits with a
planted 4x4 patch on every 3, a model trained on them, and a screenshot of report.html.

    .venv/bin/python docs/make_audit_picture.py
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_audit_e2e import dataset, train  # noqa: E402


def main() -> None:
    from PIL import Image

    from client.cli import main as xaiq
    from worker.models import digits

    work = Path(tempfile.mkdtemp(prefix="xaiq-planted-"))
    x, y = dataset(planted=True)
    for i, (img, label) in enumerate(zip(x, y)):
        (work / "data" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(work / "data" / str(label) / f"{i:04d}.png")
    (work / "model.safetensors").write_bytes(train(x, y))
    (work / "model.json").write_text(json.dumps({**digits.manifest(), "name": "digits-planted"}))
    rc = xaiq(["audit", str(work / "data"), "--model", "digits-planted", "--weights", str(work / "model.safetensors"),
               "--spec", str(work / "model.json"), "--out", str(work / "report")])
    assert rc == 0
    html = next((work / "report").rglob("report.html"))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 1500})
        page.goto(html.as_uri())
        page.screenshot(path=str(ROOT / "docs" / "audit-report.png"))
        browser.close()
    print(ROOT / "docs" / "audit-report.png")


if __name__ == "__main__":
    main()
