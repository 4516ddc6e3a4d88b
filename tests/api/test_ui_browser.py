"""The pages in headless Chromium (Debian's, driven by Playwright): they load, every
image renders, links work. Screenshots are kept in test-artifacts/."""
from __future__ import annotations

import shutil

import pytest

from tests.conftest import ARTIFACTS, wait_final

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("Chromium is missing: apt-get install chromium (scripts/test does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def finished_job(client, digits_model, digit_pngs):
    methods = {"saliency": {}, "filters": {"layer": "cnn.4", "filters": [0, 1, 2], "iterations": 20},
               "lime": {"num_samples": 200, "n_segments": 30}}
    job = client.submit(digit_pngs[0][:6], model="digits-cnn", methods=methods, name="browser-test")
    assert wait_final(client, job)["status"] == "succeeded"
    return job


def sign_in(page, stack, key: str, path: str = "/ui") -> None:
    """Open a page; the sign-in page comes first: type the key there, land on the page."""
    page.goto(f"{stack.api_url}{path}")
    page.wait_for_url("**/ui/signin**")
    page.fill("#key", key)
    page.click("#signin button[type=submit]")
    page.wait_for_url(f"**{path}")


def all_images_render(page) -> list[str]:
    page.wait_for_load_state("networkidle")
    return page.eval_on_selector_all("img", "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0))"
                                            ".map(i => i.alt || i.src)")


def test_job_list_and_job_page(browser, stack, tenant_key, finished_job):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    sign_in(page, stack, tenant_key)
    assert page.title() == "xaiq · jobs"
    link = page.locator(f"a.job-link[href='/ui/jobs/{finished_job}']")
    assert link.count() == 1
    page.screenshot(path=str(ARTIFACTS / "ui-jobs.png"), full_page=True)
    link.click()
    page.wait_for_url(f"**/ui/jobs/{finished_job}")
    assert page.locator("tr.item").count() == 6
    header = page.locator("#items th").all_inner_texts()
    assert header[-3:] == ["saliency", "filters", "lime"]
    imgs = page.locator("#items img")
    assert imgs.count() == 6 * 4  # input + three maps per image
    assert all_images_render(page) == []
    assert page.locator("figure img").count() >= 4  # the unit figure and the filter visualisations
    page.screenshot(path=str(ARTIFACTS / "ui-job.png"), full_page=True)
    page.locator("nav a", has_text="Jobs").click()
    page.wait_for_url("**/ui")
    page.close()


def test_sign_in_page_guards_every_page(browser, stack, tenant_key, finished_job):
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(f"{stack.api_url}/ui/jobs/{finished_job}")        # a printed link, opened without a session
    page.wait_for_url("**/ui/signin**")
    assert page.title() == "xaiq · sign in"
    page.fill("#key", "not-a-key")
    page.click("#signin button[type=submit]")
    assert page.locator("#error").inner_text() == "That key is not valid."
    page.fill("#key", tenant_key)
    page.click("#signin button[type=submit]")
    page.wait_for_url(f"**/ui/jobs/{finished_job}")              # back where the link pointed
    assert page.locator("tr.item").count() == 6
    cookie = next(c for c in ctx.cookies() if c["name"] == "xaiq_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and tenant_key not in cookie["value"]
    page.screenshot(path=str(ARTIFACTS / "ui-signed-in.png"))
    page.click("#signout")
    page.wait_for_url("**/ui/signin**")
    page.goto(f"{stack.api_url}/ui")
    page.wait_for_url("**/ui/signin**")                           # the session is gone
    ctx.close()


def test_a_cross_site_form_cannot_use_the_session(browser, stack, tenant_key, client, digit_pngs, digits_model):
    """CSRF: a page elsewhere posting to the cancel route with the victim's cookie is refused."""
    job = client.submit(digit_pngs[0][:16], model="digits-cnn",   # seconds of work: still running at the click
                        methods={"lime": {"num_samples": 5000, "n_segments": 60}}, unit_size=1)
    ctx = browser.new_context()
    page = ctx.new_page()
    sign_in(page, stack, tenant_key)
    import requests

    cookie = {c["name"]: c["value"] for c in ctx.cookies()}
    forged = requests.post(f"{stack.api_url}/ui/jobs/{job}/cancel", cookies=cookie, timeout=10,
                           headers={"Origin": "http://evil.example"}, allow_redirects=False)
    assert forged.status_code == 403
    assert client.status(job)["status"] in ("queued", "running")
    page.goto(f"{stack.api_url}/ui/jobs/{job}")
    page.click("#cancel")                                         # the same request from this site's page
    page.wait_for_url(f"**/ui/jobs/{job}")
    assert client.wait(job, timeout=30)["status"] == "cancelled"
    ctx.close()


def test_docs_page_renders(browser, stack):
    page = browser.new_page()
    page.goto(f"{stack.api_url}/docs")
    page.wait_for_selector(".opblock", timeout=20000)
    assert page.locator(".opblock").count() >= 7
    page.screenshot(path=str(ARTIFACTS / "ui-docs.png"))
    page.close()


@pytest.fixture(scope="module")
def finished_audit(client, digits_model, tmp_path_factory):
    from worker.models.digits import digit_images

    folder = tmp_path_factory.mktemp("dataset")
    images, labels = digit_images(120)
    for i, (img, label) in enumerate(zip(images, labels)):
        (folder / str(label)).mkdir(exist_ok=True)
        img.save(folder / str(label) / f"{i}.png")
    audit = client.audit(folder, model="digits-cnn", methods={"saliency": {}, "gradcam": {}},
                         options={"sanity_sample": 8}, name="browser-audit")
    assert client.wait(audit, timeout=300, path="/v1/audits")["status"] == "succeeded"
    return audit


def test_audit_report_page(browser, stack, tenant_key, finished_audit):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    sign_in(page, stack, tenant_key)
    page.locator(f"a.job-link[href='/ui/audits/{finished_audit}']").click()
    page.wait_for_url(f"**/ui/audits/{finished_audit}")
    frame = page.frame_locator("#report")
    frame.locator("img").first.wait_for(timeout=20000)
    report = page.frames[1]
    broken = report.eval_on_selector_all("img", "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length")
    assert broken == 0 and report.locator("img").count() >= 3
    assert "confusion" in report.content().lower()
    page.screenshot(path=str(ARTIFACTS / "ui-audit.png"), full_page=True)
    page.locator("a", has_text="images and maps").click()
    page.wait_for_url(f"**/ui/jobs/{finished_audit}")
    assert page.locator("tr.item").count() == 24  # first page of the gallery
    assert all_images_render(page) == []
    page.close()
