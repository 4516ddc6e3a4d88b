"""A corpus of hand-made bad requests: each answers a clear 4xx JSON error before it costs
anything, stores nothing, and leaves the worker well. Requests that used to cost memory
(a zip bomb, a huge JSON body) are checked for the memory they take too."""
from __future__ import annotations

import io
import json
import resource
import struct
import zipfile
import zlib

import pytest
from PIL import Image


def png(w=32, h=32, mode="L", fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), 128 if mode == "L" else (10, 20, 30)).save(buf, fmt)
    return buf.getvalue()


def multipart(http, path, spec, files=(), field="images", extra=None):
    data = {"spec": spec if isinstance(spec, str) else json.dumps(spec), **(extra or {})}
    data[field] = [(io.BytesIO(b), n) for n, b in files]
    return http.post(path, data=data, content_type="multipart/form-data")


def nested(depth: int) -> str:
    return '{"model": "digits-cnn", "name": ' + "[" * depth + "]" * depth + "}"


def zip_of(entries: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def bomb() -> bytes:
    """About 1 MB of zip holding one 1,000 MB entry of zeros."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z, z.open("0/a.png", "w", force_zip64=True) as f:
        block = b"\0" * (1 << 20)
        for _ in range(1000):
            f.write(block)
    return buf.getvalue()


def gif() -> bytes:
    return png(fmt="GIF")


def truncated_png() -> bytes:
    return png()[:60]


def huge_header_png() -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 50000, 50000, 8, 0, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


ONE = [("a.png", png())]
DIGITS = {"model": "digits-cnn"}


def cases():
    """(id, request(http) -> response, expected status, words in the message)."""
    J = lambda body: (lambda h: h.post("/v1/jobs", json=body))  # noqa: E731
    M = lambda spec, files=ONE: (lambda h: multipart(h, "/v1/jobs", spec, files))  # noqa: E731
    A = lambda body: (lambda h: h.post("/v1/audits", json=body))  # noqa: E731
    lime = lambda **p: M({**DIGITS, "methods": {"lime": p}})  # noqa: E731
    return [
        ("json-not-json", lambda h: h.post("/v1/jobs", data="{nope", content_type="application/json"), 400, "not valid JSON"),
        ("json-array", J([1, 2]), 400, "JSON object"),
        ("json-nan-token", lambda h: h.post("/v1/jobs", data='{"model": "digits-cnn", "unit_size": NaN}',
                                            content_type="application/json"), 400, "NaN"),
        ("json-infinity-token", lambda h: h.post("/v1/jobs", data='{"model": "x", "name": Infinity}',
                                                 content_type="application/json"), 400, "Infinity"),
        ("json-nested-1000-jobs", lambda h: h.post("/v1/jobs", data=nested(1000), content_type="application/json"),
         400, "nested deeper"),
        ("json-nested-1000-audits", lambda h: h.post("/v1/audits", data=nested(1000), content_type="application/json"),
         400, "nested deeper"),
        ("json-nested-1000-keys", lambda h: h.post("/v1/keys", data=nested(1000), content_type="application/json"),
         403, "admin"),     # a tenant's key is refused before the body is read
        ("json-nested-1000-spec-field", M(nested(1000)), 400, "nested deeper"),
        ("json-nested-1000-models", lambda h: multipart(h, "/v1/models", nested(1000), [("w", b"x")], "weights"),
         400, "nested deeper"),
        ("json-95mb", lambda h: h.post("/v1/jobs", data=b'{"name": "' + b"x" * (95 << 20) + b'"}',
                                       content_type="application/json"), 413, "larger than"),
        ("text-plain", lambda h: h.post("/v1/jobs", data="hello", content_type="text/plain"), 400, "multipart"),
        ("no-spec-field", lambda h: h.post("/v1/jobs", data={"images": [(io.BytesIO(png()), "a.png")]},
                                           content_type="multipart/form-data"), 400, "'spec'"),
        ("part-without-name", lambda h: h.post("/v1/jobs", content_type="multipart/form-data; boundary=b",
                                               data=b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n"),
         400, "unknown form field"),
        ("part-name-not-utf8", lambda h: h.post("/v1/jobs", content_type="multipart/form-data; boundary=b",
                                                data=b'--b\r\nContent-Disposition: form-data; name="\x81"\r\n\r\nx\r\n--b--\r\n'),
         400, "malformed multipart"),
        ("unknown-field", M({**DIGITS, "colour": "blue"}), 422, "colour"),
        ("model-dotdot", M({"model": "../x"}), 404, "unknown model"),
        ("model-slash", M({"model": "models/digits-cnn"}), 404, "unknown model"),
        ("model-too-long", M({"model": "m" * 300}), 422, "model"),
        ("get-model-dotdot", lambda h: h.get("/v1/models/%2e%2e"), 404, "unknown model"),
        ("get-model-encoded-slash", lambda h: h.get("/v1/models/a%2fb"), 404, ""),
        ("job-id-not-hex", lambda h: h.get("/v1/jobs/../../etc"), 404, ""),
        ("input-dot-segment", J({**DIGITS, "inputs": ["a/./b.png"]}), 422, "invalid path"),
        ("input-backslash", J({**DIGITS, "inputs": ["a\\b.png"]}), 422, "invalid path"),
        ("input-nul", J({**DIGITS, "inputs": ["a\u0000b.png"]}), 422, "invalid path"),
        ("input-absolute", J({**DIGITS, "inputs": ["/etc/passwd"]}), 422, "invalid path"),
        ("input-dotdot", J({**DIGITS, "inputs": ["../bob/uploads/a.png"]}), 422, "invalid path"),
        ("input-not-a-string", J({**DIGITS, "inputs": [7]}), 422, "inputs"),
        ("files-and-inputs", M({**DIGITS, "inputs": ["a.png"]}), 400, "not both"),
        ("no-images", M(DIGITS, []), 400, "no images"),
        ("lime-sigma-infinity", lime(sigma=float("inf")), 400, "Infinity"),
        ("lime-min-weight-huge", lime(min_weight=1e300), 422, "min_weight"),
        ("lime-seed-negative", lime(seed=-1), 422, "seed"),
        ("lime-seed-2-32", lime(seed=2**32), 422, "seed"),
        ("lime-samples-too-many", lime(num_samples=10**6), 422, "num_samples"),
        ("smoothgrad-seed-huge", M({**DIGITS, "methods": {"smoothgrad": {"seed": 10**20}}}), 422, "seed"),
        ("filters-on-a-linear-layer", M({**DIGITS, "methods": {"filters": {"layer": "fc.0"}}}), 422, "feature maps"),
        ("filters-negative-index", M({**DIGITS, "methods": {"filters": {"layer": "cnn.4", "filters": [-1]}}}), 422,
         "filters"),
        ("gradcam-on-a-linear-layer", M({**DIGITS, "methods": {"gradcam": {"layer": "fc.0"}}}), 422, "convolutional"),
        ("method-params-not-object", M({**DIGITS, "methods": {"saliency": 5}}), 422, "saliency"),
        ("labels-bool", M({**DIGITS, "labels": [True]}), 422, "labels.0"),
        ("labels-float", M({**DIGITS, "labels": [1.5]}), 422, "labels"),
        ("unit-size-zero", M({**DIGITS, "unit_size": 0}), 422, "unit_size"),
        ("gif-image", M(DIGITS, [("a.gif", gif())]), 415, "GIF"),
        ("bmp-image", M(DIGITS, [("a.bmp", png(fmt="BMP"))]), 415, "BMP"),
        ("truncated-png", M(DIGITS, [("t.png", truncated_png())]), 400, "t.png"),
        ("empty-file", M(DIGITS, [("e.png", b"")]), 400, "e.png"),
        ("png-bomb-header", M(DIGITS, [("big.png", huge_header_png())]), 413, "big.png"),
        ("per-page-zero", lambda h: h.get("/v1/jobs/" + "0" * 32 + "/results?per_page=0"), 404, "unknown job"),
        ("list-limit-text", lambda h: h.get("/v1/jobs?limit=many"), 422, "limit"),
        ("list-offset-negative", lambda h: h.get("/v1/jobs?offset=-5"), 422, "offset"),
        ("audit-dataset-dotdot", A({**DIGITS, "dataset": "../../models"}), 422, "folder of your uploads"),
        ("audit-filters", A({**DIGITS, "dataset": "x", "methods": {"filters": {"layer": "cnn.4"}}}), 422,
         "attribution"),
        ("audit-zip-bomb", lambda h: multipart(h, "/v1/audits", DIGITS, [("d.zip", bomb())], "dataset"), 413,
         "compress at most"),
        ("audit-zip-slip", lambda h: multipart(h, "/v1/audits", DIGITS, [("d.zip", zip_of(
            {"../../0/a.png": png()}))], "dataset"), 422, "stay inside"),
        ("audit-zip-not-zip", lambda h: multipart(h, "/v1/audits", DIGITS, [("d.zip", b"PK\x03\x04junk")], "dataset"),
         400, "not a readable zip"),
        ("upload-bad-folder", lambda h: h.post("/v1/uploads", data={"folder": "../x", "f": (io.BytesIO(png()), "a.png")},
                                               content_type="multipart/form-data"), 422, "folder"),
        ("upload-bad-name", lambda h: h.post("/v1/uploads", data={"f": (io.BytesIO(png()), "a b$.png")},
                                             content_type="multipart/form-data"), 422, "names"),
        ("model-spec-channels", lambda h: multipart(h, "/v1/models", {
            "name": "m", "architecture": "digits-cnn", "input": {"channels": 1, "height": 32, "width": 32},
            "mean": [0.5, 0.5], "std": [0.5], "classes": ["a", "b"]}, [("w", b"x")], "weights"), 422, "per input channel"),
        ("model-spec-std-zero", lambda h: multipart(h, "/v1/models", {
            "name": "m", "architecture": "digits-cnn", "input": {"channels": 1, "height": 32, "width": 32},
            "mean": [0.5], "std": [0], "classes": ["a", "b"]}, [("w", b"x")], "weights"), 422, "std"),
        ("model-no-weights", lambda h: h.post("/v1/models", data={"spec": "{}"}, content_type="multipart/form-data"),
         422, "name"),
        ("keys-as-a-tenant", lambda h: h.post("/v1/keys", json={"tenant": "x"}), 403, "admin"),
        ("method-not-allowed", lambda h: h.patch("/v1/jobs"), 405, "not allowed"),
    ]


CASES = cases()


def test_the_corpus_is_big_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("make, code, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_4xx(http, digits_model, make, code, words):
    resp = make(http)
    assert resp.status_code == code, (resp.status_code, resp.get_data(as_text=True)[:300])
    body = resp.get_json()
    assert body["error"]["code"] == code and words in body["error"]["message"], body
    if code == 405:
        assert {"GET", "POST"} <= {m.strip() for m in resp.headers["Allow"].split(",")}


def test_a_zip_bomb_and_a_huge_body_cost_no_memory(http, digits_model):
    data = bomb()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert multipart(http, "/v1/audits", DIGITS, [("d.zip", data)], "dataset").status_code == 413
    assert http.post("/v1/jobs", data=b'{"name": "' + b"x" * (95 << 20) + b'"}',
                     content_type="application/json").status_code == 413
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 300, grown_mb           # the 1,000 MB entry was never unpacked


def test_a_multipart_job_may_hold_a_thousand_files(http, digits_model):
    small = png(8, 8)
    resp = multipart(http, "/v1/jobs", {**DIGITS, "unit_size": 500}, [(f"{i}.png", small) for i in range(1000)])
    assert resp.status_code == 202, resp.get_json()
    job = resp.get_json()["id"]
    assert http.get(f"/v1/jobs/{job}").get_json()["progress"]["total"] == 1000
    http.delete(f"/v1/jobs/{job}")


def test_the_worker_is_well_after_the_corpus(client, digits_model, digit_pngs):
    from tests.conftest import wait_final

    job = client.submit(digit_pngs[0][:2], model="digits-cnn", methods={"saliency": {}})
    assert wait_final(client, job, timeout=120)["status"] == "succeeded"
