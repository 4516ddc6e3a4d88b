"""Bad input gets a clear 4xx JSON error and stores nothing."""
from __future__ import annotations

import io
import json

import pytest


def post_job(http, spec, files=()):
    data = {"spec": json.dumps(spec) if not isinstance(spec, str) else spec}
    data["images"] = [(io.BytesIO(b), name) for name, b in files]
    return http.post("/v1/jobs", data=data, content_type="multipart/form-data")


def assert_error(resp, code, *words):
    assert resp.status_code == code, resp.get_json()
    body = resp.get_json()
    assert body["error"]["code"] == code
    for w in words:
        assert w in body["error"]["message"], body["error"]["message"]
    return body


def test_unknown_job_is_404(http):
    assert_error(http.get("/v1/jobs/" + "0" * 32), 404, "unknown job")
    assert_error(http.get("/v1/jobs/not-an-id/results"), 404, "unknown job")
    assert_error(http.delete("/v1/jobs/" + "f" * 32), 404)


def test_unknown_model_is_404(http, digit_pngs):
    assert_error(post_job(http, {"model": "nope"}, digit_pngs[0][:1]), 404, "unknown model")
    assert_error(http.get("/v1/models/nope"), 404)


@pytest.mark.parametrize("methods, words", [
    ({"telepathy": {}}, ["unknown method", "saliency"]),
    ({"lime": {"num_samples": -3}}, ["num_samples"]),
    ({"saliency": {"bogus": 1}}, ["bogus"]),
    ({"filters": {}}, ["layer"]),
    ({}, ["at least one method"]),
])
def test_bad_methods_are_422(http, digits_model, digit_pngs, methods, words):
    body = assert_error(post_job(http, {"model": "digits-cnn", "methods": methods}, digit_pngs[0][:1]), 422, *words)
    assert body["error"]["details"]


def test_layer_and_filter_are_checked_against_the_model(http, digits_model, digit_pngs):
    one = digit_pngs[0][:1]
    assert_error(post_job(http, {"model": "digits-cnn", "methods": {"filters": {"layer": "cnn.99"}}}, one),
                 422, "no layer 'cnn.99'", "cnn.0")
    assert_error(post_job(http, {"model": "digits-cnn", "methods": {"filters": {"layer": "cnn.0", "filters": [16]}}},
                          one), 422, "out of range", "16 filters")
    assert_error(post_job(http, {"model": "digits-cnn", "methods": {"gradcam": {"layer": "fc.0"}}}, one),
                 422, "not a convolutional layer")


def test_bad_bodies_are_400(http, digits_model, digit_pngs):
    assert_error(post_job(http, "{not json", digit_pngs[0][:1]), 400, "not valid JSON")
    assert_error(http.post("/v1/jobs", data={"images": [(io.BytesIO(b"x"), "a.png")]},
                           content_type="multipart/form-data"), 400, "'spec'")
    assert_error(http.post("/v1/jobs", data="hello", content_type="text/plain"), 400)
    assert_error(post_job(http, {"model": "digits-cnn"}, [("a.png", b"definitely not a png")]), 400, "a.png")
    assert_error(post_job(http, {"model": "digits-cnn"}), 400, "no images")
    assert_error(http.post("/v1/jobs", json=[1, 2]), 400, "JSON object")


def test_labels_must_match_images(http, digits_model, digit_pngs):
    two = digit_pngs[0][:2]
    assert_error(post_job(http, {"model": "digits-cnn", "labels": [1]}, two), 422, "1 given for 2 images")
    assert_error(post_job(http, {"model": "digits-cnn", "labels": [1, 42]}, two), 422, "labels[1]")


def test_missing_uploads_are_422(http, digits_model):
    assert_error(http.post("/v1/jobs", json={"model": "digits-cnn", "inputs": ["nowhere/a.png"]}), 422,
                 "not in your uploads")


def test_oversized_image_and_request_are_413(settings, tenant_key, digits_model):
    from api import create_app

    app = create_app(settings.model_copy(update={"max_image_mb": 1}), reaper=False)
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tenant_key}"
    resp = post_job(c, {"model": "digits-cnn"}, [("big.png", b"\0" * (2 * 2**20))])
    assert_error(resp, 413, "larger than 1 MB")
    app = create_app(settings.model_copy(update={"max_dataset_gb": 1 / 1024}), reaper=False)   # a 1 MB stream
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tenant_key}"
    resp = post_job(c, {"model": "digits-cnn"}, [(f"{k}.png", b"\0" * 300_000) for k in range(5)])
    assert_error(resp, 413, "")


def test_image_over_the_pixel_limit_is_413(settings, tenant_key, digits_model):
    from PIL import Image

    from api import create_app

    app = create_app(settings.model_copy(update={"max_image_pixels": 100}), reaper=False)
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tenant_key}"
    buf = io.BytesIO()
    Image.new("L", (20, 20)).save(buf, "PNG")
    assert_error(post_job(c, {"model": "digits-cnn"}, [("wide.png", buf.getvalue())]), 413, "20x20")


def test_api_key_is_required(app):
    c = app.test_client()
    assert_error(c.get("/v1/jobs"), 401, "API key")
    c.environ_base["HTTP_AUTHORIZATION"] = "Bearer wrong"
    assert_error(c.get("/v1/jobs"), 401)
    assert c.get("/healthz").status_code == 200


def test_bad_requests_store_nothing(http, settings, digits_model, digit_pngs):
    from shared.storage import Keys, Storage

    st, root = Storage(settings, patient=True), Keys("alice").root
    before = set(st.list(root))
    post_job(http, {"model": "digits-cnn", "methods": {"nope": {}}}, digit_pngs[0][:3])
    post_job(http, {"model": "digits-cnn", "labels": [0]}, digit_pngs[0][:3])
    post_job(http, {"model": "digits-cnn"}, digit_pngs[0][:3] + [("bad.png", b"not an image")])  # the 4th is bad
    assert set(st.list(root)) == before


def test_decompression_bomb_and_odd_jpegs(http, digits_model):
    import struct
    import zlib

    from PIL import Image

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # a 60 kB PNG whose header says 20000x20000
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(b"\0" * 20001 * 3)) + chunk(b"IEND", b"")
    assert_error(post_job(http, {"model": "digits-cnn"}, [("bomb.png", bomb)]), 413, "bomb.png")
    buf = io.BytesIO()
    Image.new("CMYK", (32, 32), (0, 0, 0, 255)).save(buf, "JPEG")
    resp = post_job(http, {"model": "digits-cnn"}, [("cmyk.jpg", buf.getvalue())])
    assert resp.status_code == 202, resp.get_json()


def test_bad_paths_and_zips_are_4xx(http, digits_model):
    assert_error(http.post("/v1/jobs", json={"model": "digits-cnn", "inputs": ["", "a/../b.png"]}), 422, "invalid path")
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("0/a.png", b"x" * 100)
    data = bytearray(buf.getvalue())
    data[data.index(b"x" * 100)] ^= 0xFF  # a bad CRC
    resp = http.post("/v1/audits", content_type="multipart/form-data",
                     data={"spec": '{"model": "digits-cnn"}', "dataset": (io.BytesIO(bytes(data)), "d.zip")})
    assert_error(resp, 400, "cannot read the zip")


def test_the_key_is_never_read_from_a_url(app, stack, tenant_key):
    c = app.test_client()
    assert c.get(f"/v1/jobs?key={tenant_key}").status_code == 401
    page = c.get(f"/ui?key={tenant_key}")
    assert page.status_code == 302 and "/ui/signin" in page.headers["Location"] and tenant_key not in page.headers["Location"]
