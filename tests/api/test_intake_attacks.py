"""Attacks on intake, each performed: a zip whose directory names one entry many times (its
bytes inflated once per name), images whose headers promise far more pixels than their bytes
(decoding counted in the cost), a signed result link used after its key was revoked, and a
dataset that would inflate past the limit only in total."""
from __future__ import annotations

import io
import json
import struct
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.conftest import wait_final


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def overlapping_zip(names: list[str], data: bytes) -> bytes:
    """One stored entry, and a central directory that names it once per name (every record
    pointing at the same local header)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(names[0], data)
    raw = buf.getvalue()
    cd_at = raw.index(b"PK\x01\x02")
    eocd_at = raw.index(b"PK\x05\x06")
    record = raw[cd_at:eocd_at]
    n_len = struct.unpack("<H", record[28:30])[0]
    records = b"".join(record[:28] + struct.pack("<H", len(n.encode())) + record[30:46] + n.encode()
                       + record[46 + n_len:] for n in names)
    eocd = bytearray(raw[eocd_at:])
    struct.pack_into("<HHII", eocd, 8, len(names), len(names), len(records), cd_at)
    return raw[:cd_at] + records + bytes(eocd)


def post_audit(http, data: bytes, spec: dict | None = None):
    body = {"spec": json.dumps(spec or {"model": "digits-cnn"}), "dataset": (io.BytesIO(data), "d.zip")}
    return http.post("/v1/audits", data=body, content_type="multipart/form-data")


def test_a_zip_that_names_one_entry_many_times_is_refused_before_inflating(http, digits_model):
    entry = np.random.default_rng(0).integers(0, 4, 4 << 20, dtype=np.uint8).tobytes()   # ~4:1, under the ratio
    data = overlapping_zip([f"0/{k}.png" for k in range(16)], entry)
    assert len(zipfile.ZipFile(io.BytesIO(data)).infolist()) == 16          # what a naive reader would inflate
    t0 = time.monotonic()
    r = post_audit(http, data)
    assert r.status_code == 422 and "overlap" in r.get_json()["error"]["message"], r.get_json()
    print(f"16 names of one 4 MB entry refused in {time.monotonic() - t0:.2f} s")


def test_inflated_bytes_are_counted_across_every_entry(settings, tenant_key, digits_model):
    from api import create_app

    app = create_app(settings.model_copy(update={"max_dataset_gb": 4 / 1024}), reaper=False)   # 16 MB inflated
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tenant_key}"
    one = np.random.default_rng(1).integers(0, 4, 3 << 20, dtype=np.uint8).tobytes()    # 3 MB, under 100:1
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for k in range(6):                                                          # 18 MB in all
            z.writestr(f"0/{k}.png", one)
    r = post_audit(c, buf.getvalue())
    assert r.status_code == 413 and "MB" in r.get_json()["error"]["message"], r.get_json()


def test_pixels_promised_by_headers_are_counted_in_the_cost_not_decoded_by_the_api(http, digits_model):
    big = png(4096, 4096)                      # a few KB that decode to 16.7 million pixels
    assert len(big) < 64 << 10
    t0 = time.monotonic()
    data = {"spec": json.dumps({"model": "digits-cnn"}),
            "images": [(io.BytesIO(big), f"{k}.png") for k in range(60)]}
    r = http.post("/v1/jobs", data=data, content_type="multipart/form-data")
    took = time.monotonic() - t0
    assert r.status_code == 202, r.get_json()
    estimate = r.get_json()["cost"]["estimate"]
    decoding = 60 * 4096 * 4096 / 1e6 * 0.1    # XAIQ_DECODE_GFLOP_PER_MPIXEL of 60 such images
    model_passes = 60 * 4 * digits_model["gflops"]
    assert estimate == pytest.approx(decoding + model_passes, rel=1e-6)
    print(f"60 PNGs of 4096x4096 ({len(big)} bytes each) answered in {took:.2f} s, estimate {estimate:.1f} GFLOP")
    http.delete(f"/v1/jobs/{r.get_json()['id']}")


def test_the_decoding_cost_meets_the_job_limit(settings, tenant_key, digits_model):
    from api import create_app

    app = create_app(settings.model_copy(update={"max_job_gflop": 50.0}), reaper=False)
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tenant_key}"
    data = {"spec": json.dumps({"model": "digits-cnn"}),
            "images": [(io.BytesIO(png(4096, 4096)), f"{k}.png") for k in range(40)]}   # 67 GFLOP of decoding
    r = c.post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert r.status_code == 413 and "GFLOP" in r.get_json()["error"]["message"], r.get_json()


def test_a_signed_link_stops_working_when_its_key_is_revoked(stack, admin, digits_model, digit_pngs):
    import requests

    from client.sdk import Client

    made = admin.create_key("carol", "revoked soon")
    carol = Client(stack.api_url, made["key"])
    job = carol.submit(digit_pngs[0][:2], model="digits-cnn", methods={"saliency": {}})
    assert wait_final(carol, job)["status"] == "succeeded"
    link = next(carol.results(job))["methods"]["saliency"]["png"]
    assert "sig=" in link and requests.get(link, timeout=10).status_code == 200    # no key needed
    tampered = link.replace(f"/items/0/", "/items/1/")
    assert requests.get(tampered, timeout=10).status_code == 401                  # the signature covers the path
    admin.revoke_key(made["id"])
    assert requests.get(link, timeout=10).status_code == 401                       # revoked: the link is dead too
