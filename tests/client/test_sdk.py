"""The SDK on the wire and on disk: multipart bodies stream (chunked, the spec first, files
read one at a time), large uploads go in several requests, job ids resolve from a prefix,
downloads keep one self-describing layout, and maps load as arrays with NaN rows for
images without a map. Item URLs on the API's server get the key; others never do."""
from __future__ import annotations

import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import numpy as np
import pytest
import requests
from werkzeug.formparser import parse_form_data

from tests.conftest import wait_final, wait_until


class Recorder(BaseHTTPRequestHandler):
    """Records each request (headers and the de-chunked body) and answers a fixed JSON."""

    seen: ClassVar[list[dict]] = []
    answer: ClassVar[dict] = {"id": "0" * 32, "status": "queued", "links": {}, "cost": {"estimate": 1, "limit": 2},
              "skipped": [{"name": "bad.png", "reason": "not a readable PNG or JPEG image"}]}

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding") != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        out = b""
        while size := int(self.rfile.readline().strip(), 16):
            out += self.rfile.read(size)
            self.rfile.readline()
        self.rfile.readline()
        return out

    def _record_and_answer(self, body: bytes = b"") -> None:
        Recorder.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
        payload = json.dumps(self.answer if self.command == "POST" else {"ok": True}).encode()
        self.send_response(202 if self.command == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self):
        self._record_and_answer(self._body())

    def do_GET(self):
        self._record_and_answer()

    def log_message(self, *args):
        pass


@pytest.fixture()
def recorder():
    Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def parse_multipart(seen: dict):
    """The form as Werkzeug (the API's parser) reads it: (field names in order, form, files)."""
    body = seen["body"]
    environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": seen["headers"]["Content-Type"],
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
    _, form, files = parse_form_data(environ)
    order = re.findall(rb'Content-Disposition: form-data; name="([^"]+)"', body)
    return [o.decode() for o in order], form, files


def test_submit_streams_the_spec_first_then_the_files(recorder, tmp_path):
    from client.sdk import Client

    (tmp_path / "a.png").write_bytes(b"A" * 3000)
    answer = Client(recorder, "k").create_job([tmp_path / "a.png", ("b.png", b"B" * 10)], model="m",
                                              labels=[1, "cat"], name="n", skip_invalid=True)
    assert answer["skipped"] == Recorder.answer["skipped"]
    (post,) = Recorder.seen
    assert post["headers"]["Transfer-Encoding"] == "chunked" and "Content-Length" not in post["headers"]
    assert post["headers"]["Authorization"] == "Bearer k"
    order, form, files = parse_multipart(post)
    assert order == ["spec", "images", "images"]
    assert json.loads(form["spec"]) == {"model": "m", "methods": {"saliency": {}}, "name": "n", "skip_invalid": True,
                                        "labels": [1, "cat"]}
    assert [(f.filename, f.read()) for f in files.getlist("images")] == [("a.png", b"A" * 3000), ("b.png", b"B" * 10)]


def test_files_are_read_one_at_a_time_when_their_turn_comes(tmp_path):
    from client.multipart import Body

    first, second = tmp_path / "1.png", tmp_path / "2.png"
    first.write_bytes(b"1" * 100)
    second.write_bytes(b"0" * 100)
    body = Body({"spec": "{}"}, [("images", "1.png", first), ("images", "2.png", second)])
    chunks = iter(body)
    sent = b""
    while b"1" * 100 not in sent:          # the spec and the first file
        sent += next(chunks)
    second.write_bytes(b"2" * 100)         # changed before its turn: the new bytes are sent
    sent += b"".join(chunks)
    assert b"2" * 100 in sent and b"0" * 100 not in sent
    assert len(sent) == len(body)


def test_two_files_of_one_name_are_refused_before_sending(recorder, tmp_path):
    from client.inputs import InputError
    from client.sdk import Client

    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "a.png").write_bytes(b"png")
    with pytest.raises(InputError, match=r"a\.png: .*x/a\.png, .*y/a\.png"):
        Client(recorder, "k").submit([tmp_path / "x" / "a.png", tmp_path / "y" / "a.png"], model="m")
    assert Recorder.seen == []


def test_item_urls_get_the_key_only_on_the_api_server(recorder, tmp_path):
    from client.sdk import Client

    on_api = Client(recorder, "secret")
    elsewhere = Client("http://127.0.0.1:9", "secret")          # the URL is not its server's
    on_api.fetch_to("/v1/jobs/j/items/0/saliency.npy?sig=abc", tmp_path / "a")
    on_api.fetch_to(f"{recorder}/v1/x?sig=1", tmp_path / "b")
    elsewhere.fetch_to(f"{recorder}/bucket/x.npy?X-Amz-Signature=1", tmp_path / "c")
    auth = [(s["path"], s["headers"].get("Authorization")) for s in Recorder.seen]
    assert auth == [("/v1/jobs/j/items/0/saliency.npy?sig=abc", "Bearer secret"), ("/v1/x?sig=1", "Bearer secret"),
                    ("/bucket/x.npy?X-Amz-Signature=1", None)]


def test_upload_goes_in_several_requests_and_keeps_sub_folders(stack, client, digit_pngs, tmp_path):
    log = stack.logs / "api.log"
    before = log.read_text().count('"POST /v1/uploads')
    files = [(f"{c}/{name}", png) for c, (name, png) in zip("aabbb", digit_pngs[0][:5])]
    stored = client.upload(files, folder="sets/batched", max_files=2)
    assert stored == [f"sets/batched/{n}" for n, _ in files]
    assert set(stored) <= set(client.uploads("sets/batched"))
    wait_until(lambda: log.read_text().count('"POST /v1/uploads') - before == 3, 10, "three requests in the log")


def test_resolve_takes_a_unique_prefix(stack, admin, digits_model, digit_pngs):
    from client.sdk import AmbiguousJob, Client, JobNotFound

    c = Client(stack.api_url, admin.create_key("prefixes", "tests")["key"])
    jobs = [c.submit(digit_pngs[0][:1], model="digits-cnn") for _ in range(17)]    # two share a first digit
    for job in jobs:
        short = next(job[:n] for n in range(1, 33) if sum(j.startswith(job[:n]) for j in jobs) == 1)
        assert c.resolve(short) == job and c.resolve(job) == job
    shared = next(j[0] for j in jobs if sum(k[0] == j[0] for k in jobs) > 1)
    with pytest.raises(AmbiguousJob) as e:
        c.resolve(shared)
    assert {j["id"] for j in e.value.candidates} == {j for j in jobs if j[0] == shared}
    assert all(j in str(e.value) for j in jobs if j[0] == shared)
    missing = next(p for p in (f"{a}{b}" for a in "0123456789abcdef" for b in "0123456789abcdef")
                   if not any(j.startswith(p) for j in jobs))
    with pytest.raises(JobNotFound, match="no job of yours starts with"):
        c.resolve(missing)
    with pytest.raises(JobNotFound, match="not a job id"):
        c.resolve("xyz")
    for job in jobs:
        wait_final(c, job)


def test_download_writes_one_self_describing_layout(client, digits_model, digit_pngs, tmp_path):
    pngs = [(f"my picture {i}.png", png) for i, (_, png) in enumerate(digit_pngs[0][:3])]
    methods = {"saliency": {}, "filters": {"layer": "cnn.4", "filters": [0, 1], "iterations": 5}}
    job = client.submit(pngs, model="digits-cnn", methods=methods, labels=[0, 1, 2], name="layout")
    assert wait_final(client, job)["status"] == "succeeded"
    folder = client.download(job, tmp_path)
    assert folder == tmp_path / job
    record = json.loads((folder / "results.json").read_text())
    assert (record["job"], record["name"], record["status"]) == (job, "layout", "succeeded")
    assert record["model"]["name"] == "digits-cnn" and record["model"]["version"] == digits_model["version"]
    assert record["methods"]["filters"]["filters"] == [0, 1] and record["created"] and record["finished"]
    items = {it["index"]: it for it in client.results(job)}
    for image in record["images"]:
        i = image["index"]
        assert image["name"] == pngs[i][0] and image["target"] == i and image["status"] == "done"
        assert image["prediction"] == items[i]["prediction"]
        sal = image["files"]["saliency"]
        assert sal["npy"] == f"{i:05d}-my_picture_{i}/saliency.npy" and sal["png"].endswith("saliency.png")
        arr = np.load(folder / sal["npy"])
        assert [*arr.shape] == sal["shape"] and str(arr.dtype) == sal["dtype"] == "float32"
        served = np.load(io.BytesIO(requests.get(items[i]["methods"]["saliency"]["npy"], timeout=30).content))
        np.testing.assert_array_equal(arr, served)
        assert (folder / image["files"]["filters"]["png"]).stat().st_size > 0
    assert record["units"] and all((folder / rel).is_file() for rel in record["units"].values())
    maps = client.load_maps(job)
    assert set(maps) == {"saliency", "filters"} and maps["saliency"].shape == (3, 1, 32, 32)
    for image in record["images"]:
        np.testing.assert_array_equal(maps["saliency"][image["index"]], np.load(folder / image["files"]["saliency"]["npy"]))


def test_maps_of_images_without_results_are_nan(client, digits_model, digit_pngs):
    job = client.submit(digit_pngs[0][:12], model="digits-cnn", methods={"lime": {"num_samples": 2000}}, unit_size=1)
    wait_until(lambda: client.status(job)["progress"]["done"] >= 1, 180, "the first image")
    client.cancel(job)
    wait_final(client, job)
    done = {it["index"] for it in client.results(job) if it["status"] == "done"}
    assert 1 <= len(done) < 12
    maps = client.load_maps(job)["lime"]
    assert maps.shape[0] == 12
    for i in range(12):
        assert np.isnan(maps[i]).all() != (i in done)
