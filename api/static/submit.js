// The submit page: gather images from drops and pickers (xaiqFiles), build the methods'
// fields (xaiqParams, from GET /v1/methods), POST /v1/jobs as multipart with upload
// progress, then open the job's page.
"use strict";
(function () {
  const F = window.xaiqFiles, P = window.xaiqParams;
  let images = [], model = null;
  const $ = (id) => document.getElementById(id);

  function megabytes(n) { return (n / 2 ** 20).toFixed(1); }
  function size(n) { return n < 2 ** 20 ? `${(n / 1024).toFixed(1)} KB` : `${megabytes(n)} MB`; }

  function show(result) {
    images = result.images;
    const bytes = images.reduce((s, i) => s + i.file.size, 0);
    $("found").textContent = images.length
      ? `${images.length} image${images.length === 1 ? "" : "s"} found (${size(bytes)})` + (result.skipped.length ? `, ${result.skipped.length} skipped` : "")
      : `No PNG or JPEG image found` + (result.skipped.length ? ` (${result.skipped.length} skipped)` : "");
    $("images-box").hidden = !images.length;
    $("images").replaceChildren(...images.slice(0, 1000).map((i) => P.el("li", { text: i.path })));
    $("skipped-box").hidden = !result.skipped.length;
    $("skipped-count").textContent = `${result.skipped.length} file${result.skipped.length === 1 ? "" : "s"} skipped`;
    $("skipped").tBodies[0].replaceChildren(...result.skipped.map((s) => P.el("tr", {}, P.el("td", { text: s.path }), P.el("td", { text: s.why }))));
    checkLabels();
  }

  async function take(listPromise) {
    $("found").textContent = "Reading…";
    $("error").textContent = "";
    try {
      show(await F.classify(await listPromise));
    } catch (err) {
      $("found").textContent = "";
      $("error").textContent = `Could not read what was given: ${err.message || err}`;
    }
  }

  function dropZone() {
    const drop = $("drop");
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      take(F.fromDrop(e.dataTransfer));
    });
    for (const id of ["pick-files", "pick-folder"]) {
      $(id).addEventListener("change", (e) => take(Promise.resolve(F.fromInput(e.target))));
    }
  }

  // labels: from folder names or typed; checked against the model's classes before sending.
  function labels() {
    const mode = $("labels-mode").value;
    if (mode === "folder") return images.map((i) => F.folderOf(i.path));
    if (mode === "list") return $("labels").value.split(/[\n,]+/).map((s) => s.trim()).filter(Boolean)
      .map((s) => (/^\d+$/.test(s) ? Number(s) : s));
    return null;
  }

  function checkLabels() {
    const mode = $("labels-mode").value, note = $("labels-note");
    $("labels").hidden = mode !== "list";
    const ls = labels();
    if (!ls) { note.textContent = ""; return true; }
    const classes = (model && model.classes) || [];
    const unknown = ls.filter((l) => (typeof l === "number" ? l >= classes.length : !classes.includes(l)));
    let text = `${ls.length} label${ls.length === 1 ? "" : "s"} for ${images.length} image${images.length === 1 ? "" : "s"}`;
    if (unknown.length) text += `; not classes of ${model ? model.name : "the model"}: ${[...new Set(unknown)].slice(0, 10).join(", ")}`;
    note.textContent = text;
    return ls.length === images.length && !unknown.length;
  }

  async function chooseModel() {
    const name = $("model").value;
    model = null;
    if (!name) return;
    try {
      model = await P.getJson(`${$("submit-form").dataset.modelsUrl}/${encodeURIComponent(name)}`);
    } catch (err) {
      $("error").textContent = err.message;
    }
    P.applyModel($("methods"), model);
    checkLabels();
    $("submit-form").dataset.model = model ? model.name : "";   // the fields follow this model now
  }

  function problems(form, methods) {
    const maxImages = Number(form.dataset.maxImages), maxBytes = Number(form.dataset.maxUploadMb) * 2 ** 20;
    const bytes = images.reduce((s, i) => s + i.file.size, 0);
    if (!images.length) return "Add images first: drop a folder or a zip, or pick files.";
    if (images.length > maxImages) return `${images.length} images: a job takes at most ${maxImages}.`;
    if (bytes > maxBytes * 0.98) return `${megabytes(bytes)} MB: one upload takes at most ${form.dataset.maxUploadMb} MB (use xaiq upload for more).`;
    if (!$("model").value) return "Choose a model.";
    if (!Object.keys(methods).length) return "Choose at least one method.";
    if (!checkLabels()) return "The labels do not fit: " + $("labels-note").textContent;
    return null;
  }

  async function submit(e) {
    e.preventDefault();
    const form = e.target, methods = P.chosen($("methods"));
    const problem = problems(form, methods);
    $("error").textContent = problem || "";
    if (problem) return;
    const spec = { model: $("model").value, methods };
    if ($("name").value.trim()) spec.name = $("name").value.trim();
    const ls = labels();
    if (ls) spec.labels = ls;
    const body = new FormData();
    body.append("spec", JSON.stringify(spec));
    for (const i of images) body.append("images", i.file, i.path);
    $("submit").disabled = true;
    const bar = $("upload-progress");
    bar.hidden = false;
    const sent = { loaded: 0, total: 0 };
    const r = await P.post(form.dataset.jobsUrl, body, (done, total) => {
      Object.assign(sent, { loaded: done, total });
      bar.value = done / total;
      $("upload-text").textContent = `uploading ${megabytes(done)} of ${megabytes(total)} MB`;
    });
    if (r.status === 202) {
      P.remember(r.body.id, `${images.length} image${images.length === 1 ? "" : "s"}`, sent);
      $("upload-text").textContent = "submitted; opening the job…";
      window.location.assign(r.body.links.page);
      return;
    }
    $("submit").disabled = false;
    bar.hidden = true;
    $("upload-text").textContent = "";
    $("error").textContent = P.errorText(r.status, r.body);
  }

  document.addEventListener("DOMContentLoaded", async () => {
    const form = $("submit-form");
    dropZone();
    $("labels-mode").addEventListener("change", checkLabels);
    $("labels").addEventListener("input", checkLabels);
    $("model").addEventListener("change", chooseModel);
    form.addEventListener("submit", submit);
    try {
      const all = await P.getJson(form.dataset.methodsUrl);
      P.methods($("methods"), all.methods);
    } catch (err) {
      $("error").textContent = `The methods could not be loaded: ${err.message}`;
    }
    await chooseModel();
    form.dataset.ready = "1";   // fields built: the page is usable
  });
})();
