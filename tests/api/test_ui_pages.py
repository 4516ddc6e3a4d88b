"""The pages that act, in headless Chromium: models (list, one model's layers and versions,
registering through the form), submitting a folder or a zip with labels from folder names,
starting an audit, the job list's times, the gallery's truth, markers, filters and colour
bars, and the audit page's curves and examples. Every page runs under its Content-Security-
Policy without one refusal or script error. Screenshots go to test-artifacts/."""
from __future__ import annotations

import io
import re
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.api.test_ui_browser import browser, sign_in  # noqa: F401 - the fixture, shared
from tests.conftest import ARTIFACTS, wait_final

NEW_PAGES = ("/ui/models", "/ui/models/digits-cnn", "/ui/submit", "/ui/audits/new")


def open_page(browser, width: int = 1400):  # noqa: F811
    """A page in a fresh context, and the list of what went wrong in it: script errors and
    CSP refusals (an API's 4xx answer, which the browser logs too, is checked by the tests)."""
    ctx = browser.new_context(viewport={"width": width, "height": 1000})
    page = ctx.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    page.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource: the server "
                                                                              "responded with a status of 4")
            and problems.append(f"console: {m.text}"))
    return page, problems


def png_bytes(pngs, i: int) -> bytes:
    return pngs[0][i][1]


# --- models ---------------------------------------------------------------------------
def test_models_list_and_a_models_layers(browser, stack, tenant_key, client, digits_model):  # noqa: F811
    page, problems = open_page(browser)
    sign_in(page, stack, tenant_key, "/ui/models")
    assert page.title() == "xaiq · models"
    cells = page.locator("tr.model[data-name='digits-cnn'] td").all_inner_texts()
    assert cells[1].startswith("ready") and cells[2].startswith("safetensors")
    assert cells[3].startswith("10: 0, 1, 2") and cells[4] == "1×32×32" and cells[7] == "shared"
    page.locator("a.model-link[href='/ui/models/digits-cnn']").click()
    page.wait_for_url("**/ui/models/digits-cnn")
    info = client.session.get(f"{client.server}/v1/models/digits-cnn", timeout=10).json()
    assert page.locator("tr.version").count() == len(info["versions"]) >= 1
    assert page.locator("tr.version td.status").first.inner_text() == "ready"
    assert page.locator("tr.layer").count() == len(info["layers"])
    for layer in info["layers"]:
        row = page.locator(f"tr.layer[data-path='{layer['path']}']")
        cells = row.locator("td").all_inner_texts()
        assert cells[1] == layer["type"] and cells[2] == str(layer.get("out_channels") or "")
        assert cells[3].startswith("×".join(map(str, layer.get("shape") or [])))
        gradcam = "yes" in row.locator("td.use-gradcam").get_attribute("class")
        filters = "yes" in row.locator("td.use-filters").get_attribute("class")
        assert gradcam == (layer["type"] == "Conv2d"), layer          # Grad-CAM: convolutional layers
        assert filters == (len(layer.get("shape") or [0, 0, 0]) == 3), layer   # filters: feature maps
    assert "yes" in page.locator("tr.layer[data-path='cnn.0'] td.use-gradcam").get_attribute("class")
    assert "no" in page.locator("tr.layer[data-path='fc.2'] td.use-filters").get_attribute("class")
    page.screenshot(path=str(ARTIFACTS / "ui-model.png"), full_page=True)
    assert problems == []
    page.context.close()


def fill_model_form(page, name: str, weights: Path, spec: dict) -> None:
    page.wait_for_selector("#register-form[data-ready='1']")
    page.set_input_files("#weights", str(weights))
    page.fill("#model-name", name)
    page.select_option("#architecture", spec["architecture"])
    for key in ("channels", "height", "width"):
        page.fill(f"#{key}", str(spec["input"][key]))
    page.fill("#mean", ", ".join(map(str, spec["mean"])))
    page.fill("#std", ", ".join(map(str, spec["std"])))
    page.fill("#classes", "\n".join(spec["classes"]))
    page.click("#register")


def test_registering_models_from_the_page(browser, stack, tenant_key, client, digits_model, tmp_path):  # noqa: F811
    from tests.zoo import digits_cnn, scripted
    from worker.models import digits

    page, problems = open_page(browser)
    sign_in(page, stack, tenant_key, "/ui/models")
    spec = digits.manifest()
    fill_model_form(page, "ui-digits", digits.WEIGHTS / "digits-cnn.safetensors", spec)
    page.wait_for_selector("#result-status", timeout=120_000)
    assert page.inner_text("#result-status") == "ready"
    info = client.session.get(f"{client.server}/v1/models/ui-digits", timeout=10).json()
    assert info["status"] == "ready" and info["format"] == "safetensors" and not info["shared"]
    assert {k: info[k] for k in ("input", "mean", "std", "classes")} == {k: spec[k] for k in ("input", "mean", "std", "classes")}
    page.click("#result-link")
    page.wait_for_url("**/ui/models/ui-digits")
    assert page.inner_text("#status") == "ready"

    page.goto(f"{stack.api_url}/ui/models")                          # the same name again: refused, said why
    fill_model_form(page, "ui-digits", digits.WEIGHTS / "digits-cnn.safetensors", spec)
    page.wait_for_selector("#error:not(:empty)")   # (wait_for_function would need eval, which the CSP refuses)
    assert page.inner_text("#error").startswith("409: model 'ui-digits' exists")

    broken = tmp_path / "broken.pt"                                  # not TorchScript: checked, then invalid
    broken.write_bytes(b"not a model at all")
    page.goto(f"{stack.api_url}/ui/models")
    fill_model_form(page, "ui-broken", broken, {**spec, "architecture": "torchscript"})
    page.wait_for_selector("#result-status", timeout=120_000)
    assert page.inner_text("#result-status") == "invalid"
    page.click("#result-link")
    page.wait_for_url("**/ui/models/ui-broken")
    why = client.session.get(f"{client.server}/v1/models/ui-broken", timeout=10).json()["versions"][-1]["error"]
    assert why and page.locator("tr.version td.failed").first.inner_text() == why

    script = tmp_path / "digits.ts"                                 # TorchScript: no hooks, no layer methods
    script.write_bytes(scripted(digits_cnn()))
    page.goto(f"{stack.api_url}/ui/models")
    fill_model_form(page, "ui-script", script, {**spec, "architecture": "torchscript"})
    page.wait_for_selector("#result-status", timeout=120_000)
    assert page.inner_text("#result-status") == "ready"
    page.goto(f"{stack.api_url}/ui/submit")
    page.wait_for_selector("#submit-form[data-ready='1']")
    page.select_option("#model", "ui-script")
    page.wait_for_selector("#submit-form[data-model='ui-script']")
    for m in ("gradcam", "filters"):
        assert page.locator(f"fieldset[data-method='{m}'] input[name=method]").is_disabled()
        assert "not for torchscript models" in page.inner_text(f"fieldset[data-method='{m}'] .why")
    assert page.locator("fieldset[data-method='saliency'] input[name=method]").is_enabled()
    assert problems == []
    page.context.close()


# --- submitting ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, digit_pngs) -> tuple[Path, dict[str, str]]:
    """A folder as users have them: class folders at two depths, a zip inside, and files
    that are not images. Returns the folder and {image path as the page names it: its class}."""
    pngs, labels = digit_pngs
    root = tmp_path_factory.mktemp("photos") / "photos"
    expected = {}
    for i in range(4):                                                # photos/{class}/img-i.png
        (root / str(labels[i])).mkdir(parents=True, exist_ok=True)
        (root / str(labels[i]) / f"img-{i}.png").write_bytes(pngs[i][1])
        expected[f"photos/{labels[i]}/img-{i}.png"] = str(labels[i])
    for i in range(4, 6):                                             # photos/more/deeper/{class}/img-i.png
        d = root / "more" / "deeper" / str(labels[i])
        d.mkdir(parents=True, exist_ok=True)
        (d / f"img-{i}.png").write_bytes(pngs[i][1])
        expected[f"photos/more/deeper/{labels[i]}/img-{i}.png"] = str(labels[i])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:                              # one deflated, one stored entry
        z.writestr(f"{labels[6]}/z-6.png", pngs[6][1], compress_type=zipfile.ZIP_DEFLATED)
        z.writestr(f"{labels[7]}/z-7.png", pngs[7][1], compress_type=zipfile.ZIP_STORED)
        z.writestr("readme.md", "# not an image", compress_type=zipfile.ZIP_DEFLATED)
    (root / "batch.zip").write_bytes(buf.getvalue())
    expected[f"{labels[6]}/z-6.png"] = str(labels[6])
    expected[f"{labels[7]}/z-7.png"] = str(labels[7])
    (root / "notes.txt").write_text("not an image")
    (root / "fake.png").write_text("a text file named .png")
    (root / "empty.png").write_bytes(b"")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root, expected


SKIPPED = {"photos/notes.txt": "not a PNG or JPEG image",
           "photos/fake.png": "named like an image but not a PNG or JPEG inside",
           "photos/empty.png": "empty file",
           "photos/.DS_Store": "hidden or system file",
           "photos/batch.zip: readme.md": "not a PNG or JPEG image"}


def skipped(page) -> dict[str, str]:
    """The skipped files and why, as the page lists them (in a closed <details>: text, not innerText)."""
    assert page.inner_text("#skipped-count").endswith("skipped")
    return dict(zip(page.locator("#skipped td:nth-child(1)").all_text_contents(),
                    page.locator("#skipped td:nth-child(2)").all_text_contents()))


def test_submit_a_folder_with_labels_from_its_folders(browser, stack, tenant_key, client, digits_model,  # noqa: F811
                                                      photo_folder, digit_pngs):
    root, expected = photo_folder
    page, problems = open_page(browser)
    sign_in(page, stack, tenant_key, "/ui/submit")
    page.wait_for_selector("#submit-form[data-ready='1']")
    page.set_input_files("#pick-folder", str(root))
    page.locator("#found", has_text="found").wait_for()
    assert page.inner_text("#found").startswith(f"{len(expected)} images found")
    assert skipped(page) == SKIPPED
    page.select_option("#model", "digits-cnn")
    page.wait_for_selector("#submit-form[data-model='digits-cnn']")
    info = client.session.get(f"{client.server}/v1/models/digits-cnn", timeout=10).json()
    convs = [layer["path"] for layer in info["layers"] if layer["conv"]]
    page.check("fieldset[data-method='gradcam'] input[name=method]")
    options = page.locator("fieldset[data-method='gradcam'] select[data-kind=layer] option")
    assert options.all_inner_texts()[0].startswith("default") and \
        [o.split(" ")[0] for o in options.all_inner_texts()[1:]] == convs
    page.select_option("#labels-mode", "folder")
    assert page.inner_text("#labels-note") == f"{len(expected)} labels for {len(expected)} images"
    page.fill("#name", "ui-folder-job")
    page.screenshot(path=str(ARTIFACTS / "ui-submit.png"), full_page=True)
    page.click("#submit")
    page.wait_for_url(re.compile(r".*/ui/jobs/[0-9a-f]{32}$"), timeout=60_000)
    job = page.url.rsplit("/", 1)[-1]
    sent = page.locator("#uploaded")
    images = sum(len(digit_pngs[0][i][1]) for i in range(8))          # the eight images' bytes
    assert int(sent.get_attribute("data-loaded")) == int(sent.get_attribute("data-total")) > images   # progress events
    assert sent.inner_text().startswith(f"Submitted {len(expected)} images")
    status = wait_final(client, job)
    assert status["status"] == "succeeded" and status["name"] == "ui-folder-job"
    assert set(status["methods"]) == {"saliency", "gradcam"} and status["methods"]["gradcam"]["layer"] is None
    results = client.session.get(f"{client.server}/v1/jobs/{job}/results", timeout=10).json()["items"]
    assert sorted(it["name"] for it in results) == sorted(expected)
    assert all(it["target"] == int(expected[it["name"]]) for it in results)     # the folders' labels
    page.reload()
    assert page.locator("tr.item").count() == len(expected)
    for it in results:
        row = page.locator(f"tr.item[data-index='{it['index']}']")
        assert row.locator("td.target .truth").inner_text() == expected[it["name"]]
        right = it["prediction"]["class"] == expected[it["name"]]
        assert row.locator(".mark").inner_text() == ("✓ correct" if right else "✗ wrong")
    assert problems == []
    page.context.close()


def test_drop_of_files_and_a_zip_and_what_is_refused(browser, stack, tenant_key, digits_model, digit_pngs):  # noqa: F811
    """A drop without folder entries (files, a zip); then the page's own checks before any upload."""
    page, problems = open_page(browser)
    sign_in(page, stack, tenant_key, "/ui/submit")
    page.wait_for_selector("#submit-form[data-ready='1']")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(3):
            z.writestr(f"set/{i}.png", png_bytes(digit_pngs, i))
        z.writestr("__MACOSX/set/._0.png", b"resource fork")
    files = [("a.png", png_bytes(digit_pngs, 10)), ("b.png", png_bytes(digit_pngs, 11)), ("c.gif", b"GIF89a..."),
             ("set.zip", buf.getvalue())]
    dt = page.evaluate_handle("""files => { const dt = new DataTransfer();
        for (const [name, bytes] of files) dt.items.add(new File([new Uint8Array(bytes)], name));
        return dt; }""", [[n, list(b)] for n, b in files])
    page.select_option("#model", "digits-cnn")
    page.wait_for_selector("#submit-form[data-model='digits-cnn']")
    page.dispatch_event("#drop", "drop", {"dataTransfer": dt})
    page.locator("#found", has_text="found").wait_for()
    assert page.inner_text("#found").startswith("5 images found")
    assert page.locator("#images li").all_text_contents() == ["a.png", "b.png", "set/0.png", "set/1.png", "set/2.png"]
    assert skipped(page) == {"c.gif": "not a PNG or JPEG image", "set.zip: __MACOSX/set/._0.png": "hidden or system file"}
    page.select_option("#labels-mode", "list")
    page.fill("#labels", "1, 2, 3")
    page.click("#submit")
    assert page.inner_text("#error").startswith("The labels do not fit: 3 labels for 5 images")
    page.fill("#labels", "1, 2, 3, 4, eleven")
    page.click("#submit")
    assert "not classes of digits-cnn: eleven" in page.inner_text("#error")
    page.select_option("#labels-mode", "")
    page.uncheck("fieldset[data-method='saliency'] input[name=method]")
    page.click("#submit")
    assert page.inner_text("#error") == "Choose at least one method."
    page.check("fieldset[data-method='lime'] input[name=method]")
    page.fill("input[name='lime.num_samples']", "5")                   # below the schema's minimum: the API says so
    page.click("#submit")
    page.locator("#error", has_text="422: ").wait_for()
    assert "num_samples" in page.inner_text("#error")
    assert page.url.endswith("/ui/submit")
    assert problems == []
    page.context.close()


# --- audits ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def page_audit(browser, stack, tenant_key, client, digits_model, tmp_path_factory):  # noqa: F811
    """An audit started from the page with a zip of class folders; (its id, the zip's classes)."""
    from worker.models.digits import digit_images

    images, labels = digit_images(60)
    path = tmp_path_factory.mktemp("zip") / "digits.zip"
    with zipfile.ZipFile(path, "w") as z:
        for i, (img, label) in enumerate(zip(images, labels)):
            b = io.BytesIO()
            img.save(b, "PNG")
            z.writestr(f"{label}/{i}.png", b.getvalue())
    page, problems = open_page(browser)
    sign_in(page, stack, tenant_key, "/ui/audits/new")
    page.wait_for_selector("#audit-form[data-ready='1']")
    assert page.locator("fieldset.method").all_inner_texts() and \
        page.locator("fieldset[data-method='filters']").count() == 0      # audits take attribution methods only
    page.set_input_files("#zip", str(path))
    page.select_option("#model", "digits-cnn")
    page.wait_for_selector("#audit-form[data-model='digits-cnn']")
    page.check("fieldset[data-method='gradcam'] input[name=method]")
    page.fill("#options input[name=faithfulness_steps]", "8")
    page.fill("#options input[name=sanity_sample]", "4")
    page.fill("#name", "ui-audit")
    page.screenshot(path=str(ARTIFACTS / "ui-audit-new.png"), full_page=True)
    page.click("#submit")
    page.wait_for_url(re.compile(r".*/ui/audits/[0-9a-f]{32}$"), timeout=60_000)
    audit = page.url.rsplit("/", 1)[-1]
    assert client.wait(audit, timeout=300, path="/v1/audits")["status"] == "succeeded"
    assert problems == []
    page.context.close()
    return audit, sorted({str(x) for x in labels})


def test_audit_page_draws_the_reports_curves_and_examples(browser, stack, tenant_key, client, page_audit):  # noqa: F811
    audit, classes = page_audit
    report = client.session.get(f"{client.server}/v1/audits/{audit}/report", timeout=10).json()["report"]
    assert report["meta"]["options"]["faithfulness_steps"] == 8 and report["meta"]["name"] == "ui-audit"
    page, problems = open_page(browser)
    sign_in(page, stack, tenant_key, f"/ui/audits/{audit}")
    for m in ("saliency", "gradcam"):
        curves = report["per_method"][m]["curves"]
        assert curves["n"] == 60 and len(curves["fraction"]) == 9
        for kind in ("deletion", "insertion"):
            fig = page.locator(f"figure.curve[data-method='{m}'][data-kind='{kind}']")
            for line, key in (("method", kind), ("random", f"{kind}_random")):
                points = fig.locator(f"polyline.{line}").get_attribute("points").split()
                ys = [1 - float(p.split(",")[1]) / 180 for p in points]          # the plot is 180 px high
                assert ys == pytest.approx(curves[key], abs=0.004), (m, key)
            auc = report["per_method"][m]["faithfulness"]["overall"][kind]
            assert fig.locator(".auc").inner_text() == f"{auc:.3f}"
    sections = page.locator("section.class-examples")
    assert sections.count() == len(classes)
    for i in range(sections.count()):
        section = sections.nth(i)
        name = section.get_attribute("data-class")
        for fig in section.locator("figure.example").all():
            predicted = fig.locator(".pred").inner_text()
            assert fig.locator(".mark").inner_text() == ("✓ correct" if predicted == name else "✗ wrong")
            assert fig.locator("img").count() == 3 and fig.locator(".cbar .ramp").count() == 2
    broken = page.eval_on_selector_all("#examples img", "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length")
    assert broken == 0
    assert page.get_attribute("#report", "sandbox") == ""                # no scripts, no same origin
    page.frame_locator("#report").locator("img").first.wait_for(timeout=20_000)
    page.locator("#curves").screenshot(path=str(ARTIFACTS / "ui-audit-curves.png"))
    page.screenshot(path=str(ARTIFACTS / "ui-audit-page.png"), full_page=True)
    assert problems == []
    page.context.close()


def test_audit_of_a_folder_of_uploads_from_the_page(browser, stack, tenant_key, client, digits_model, digit_pngs):  # noqa: F811
    pngs, labels = digit_pngs
    for i in range(6):
        client.upload([pngs[i]], folder=f"ui-sets/val/{labels[i]}")
    page, problems = open_page(browser)
    sign_in(page, stack, tenant_key, "/ui/audits/new")
    page.wait_for_selector("#audit-form[data-ready='1']")
    page.select_option("#model", "digits-cnn")
    page.wait_for_selector("#audit-form[data-model='digits-cnn']")
    page.check("input[name=source][value=uploads]")
    page.select_option("#folder", "ui-sets/val")
    page.fill("#options input[name=sanity_sample]", "0")
    page.fill("#options input[name=faithfulness_steps]", "2")
    page.click("#submit")
    page.wait_for_url(re.compile(r".*/ui/audits/[0-9a-f]{32}$"), timeout=60_000)
    audit = page.url.rsplit("/", 1)[-1]
    state = client.wait(audit, timeout=300, path="/v1/audits")
    assert state["status"] == "succeeded" and state["progress"]["total"] == 6
    assert problems == []
    page.context.close()


# --- the job list and the gallery --------------------------------------------------------
@pytest.fixture(scope="module")
def labelled_job(client, digits_model, digit_pngs):
    """30 digits with labels, three of them deliberately wrong; (job id, the labels given)."""
    pngs, labels = digit_pngs
    given = [int(x) for x in labels[:30]]
    for i in (2, 5, 11):
        given[i] = (given[i] + 1) % 10
    job = client.submit(pngs[:30], model="digits-cnn", methods={"saliency": {}, "lime": {"num_samples": 100, "n_segments": 20}},
                        labels=given, name="ui-labelled")
    assert wait_final(client, job)["status"] == "succeeded"
    return job, given


def rows_of(page) -> list[dict]:
    return page.eval_on_selector_all("tr.item", """rows => rows.map(r => ({
        index: Number(r.dataset.index), name: r.querySelector('.name').textContent,
        truth: (r.querySelector('.truth') || {}).textContent, pred: (r.querySelector('.pred') || {}).textContent,
        mark: (r.querySelector('.mark') || {}).textContent || null}))""")


def test_gallery_truth_markers_filters_colour_bars_and_paging(browser, stack, tenant_key, client, labelled_job):  # noqa: F811
    job, given = labelled_job
    items = client.session.get(f"{client.server}/v1/jobs/{job}/results?per_page=100", timeout=10).json()["items"]
    pred = {it["index"]: it["prediction"]["class"] for it in items}
    wrong = {i for i in pred if pred[i] != str(given[i])}
    assert {2, 5, 11} <= wrong
    page, problems = open_page(browser)
    sign_in(page, stack, tenant_key, f"/ui/jobs/{job}")
    rows = rows_of(page)
    assert [r["index"] for r in rows] == list(range(24))                   # page 1 of 2
    for r in rows:
        assert r["truth"] == str(given[r["index"]]) and r["pred"] == pred[r["index"]]
        assert r["mark"] == ("✗ wrong" if r["index"] in wrong else "✓ correct")
    assert page.inner_text("#paging").startswith("page 1 of 2 (30 images)")
    for m, ramp in (("saliency", "grey"), ("lime", "lime")):              # a colour bar beside every picture
        assert page.locator(f"tr.item td:has(img[alt^='{m} ']) .cbar .ramp.{ramp}").count() == 24
        assert page.locator(f"#legends .legend[data-method='{m}'] .ramp.{ramp}").count() == 1
    page.screenshot(path=str(ARTIFACTS / "ui-gallery.png"), full_page=True)
    page.click("#next")
    assert [r["index"] for r in rows_of(page)] == list(range(24, 30))

    page.select_option("#filters select[name=correct]", "wrong")           # filters
    page.click("#filters button[type=submit]")
    page.wait_for_url("**correct=wrong**")
    assert {r["index"] for r in rows_of(page)} == wrong
    cls = pred[0]
    page.goto(f"{stack.api_url}/ui/jobs/{job}?predicted={cls}")
    assert {r["index"] for r in rows_of(page)} == {i for i in pred if pred[i] == cls}
    page.goto(f"{stack.api_url}/ui/jobs/{job}?truth={given[3]}&correct=correct")
    assert {r["index"] for r in rows_of(page)} == {i for i in pred if given[i] == given[3] and i not in wrong}
    page.goto(f"{stack.api_url}/ui/jobs/{job}?q=DIGIT-1")
    assert {r["name"] for r in rows_of(page)} == {it["name"] for it in items if "digit-1" in it["name"]}
    page.goto(f"{stack.api_url}/ui/jobs/{job}?status=failed")
    assert rows_of(page) == [] and page.inner_text("#no-items").startswith("No image matches")
    assert problems == []
    page.context.close()


def test_job_list_shows_names_times_and_refreshes_while_running(browser, stack, tenant_key, client, labelled_job,  # noqa: F811
                                                              digit_pngs):
    job, _ = labelled_job
    page, problems = open_page(browser)
    sign_in(page, stack, tenant_key)
    row = page.locator(f"tr.job[data-id='{job}']")
    assert row.locator("a.job-link").inner_text() == "ui-labelled" and row.locator("td.kind").inner_text() == "job"
    state = client.status(job)
    created = row.locator("td.created time")
    assert created.get_attribute("datetime") == datetime.fromtimestamp(int(state["created"]), timezone.utc).isoformat()
    took = round(state["finished"] - state["started"])
    assert row.locator("td.duration").inner_text() in (f"{took}s", f"{took // 60}m {took % 60:02d}s")
    assert page.locator("meta[http-equiv=refresh]").count() == 0           # nothing runs: no refresh
    running = client.submit(digit_pngs[0][:16], model="digits-cnn", methods={"lime": {"num_samples": 4000}},
                            unit_size=1, name="ui-running")
    try:
        page.reload()
        assert page.locator("meta[http-equiv=refresh]").get_attribute("content") == "5"
        since = page.locator(f"tr.job[data-id='{running}'] td.duration span[data-since]")
        first = since.inner_text()
        page.wait_for_timeout(2100)
        assert since.inner_text() != first                                  # the elapsed time ticks
        page.screenshot(path=str(ARTIFACTS / "ui-jobs-running.png"), full_page=True)
    finally:
        client.cancel(running)
    assert problems == []
    page.context.close()


# --- guards ------------------------------------------------------------------------------
def test_new_pages_need_a_session_and_hide_other_tenants(browser, stack, tenant_key, other_client, client,  # noqa: F811
                                                         labelled_job, page_audit):
    page, _ = open_page(browser)
    for path in NEW_PAGES + (f"/ui/audits/{page_audit[0]}/report",):
        page.goto(stack.api_url + path)
        page.wait_for_url("**/ui/signin**")
    bob = other_client.session.headers["Authorization"].split(" ", 1)[1]
    sign_in(page, stack, bob, "/ui/models")
    for path in (f"/ui/jobs/{labelled_job[0]}", f"/ui/audits/{page_audit[0]}", f"/ui/audits/{page_audit[0]}/report",
                 "/ui/models/ui-digits", f"/ui/jobs/{labelled_job[0]}?correct=wrong"):
        resp = page.goto(stack.api_url + path)
        assert resp.status == 404 and page.inner_text("h1") == "404", path
        assert "ui-labelled" not in page.content() and "ui-audit" not in page.content()
    page.goto(f"{stack.api_url}/ui/models")
    assert page.locator("tr.model[data-name='ui-digits']").count() == 0
    page.context.close()


def test_pages_send_a_strict_content_security_policy(stack, tenant_key):
    import requests

    for path in NEW_PAGES + ("/ui", "/ui/signin"):
        r = requests.get(stack.api_url + path, headers={"Authorization": f"Bearer {tenant_key}"}, timeout=10)
        assert r.status_code == 200, path
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self';" in csp and "style-src 'self';" in csp and "frame-ancestors 'self'" in csp
        assert "<script>" not in r.text and " style=" not in r.text and "onclick=" not in r.text   # nothing inline
