// The new-audit page: a zip of class folders (multipart, with upload progress) or a folder of
// the tenant's uploads (JSON), the model, attribution methods and the audit options (fields
// from the AuditOptions schema in the page); POST /v1/audits, then open the audit's page.
"use strict";
(function () {
  const P = window.xaiqParams;
  const $ = (id) => document.getElementById(id);

  function source() { return document.querySelector("input[name=source]:checked").value; }

  async function chooseModel() {
    let model = null;
    if ($("model").value) {
      try {
        model = await P.getJson(`${$("audit-form").dataset.modelsUrl}/${encodeURIComponent($("model").value)}`);
      } catch (err) { $("error").textContent = err.message; }
    }
    P.applyModel($("methods"), model);
    $("audit-form").dataset.model = model ? model.name : "";
  }

  function spec() {
    const s = { model: $("model").value, methods: P.chosen($("methods")), options: P.read($("options")) };
    if ($("name").value.trim()) s.name = $("name").value.trim();
    return s;
  }

  function problem(form, s) {
    if (!s.model) return "Choose a model.";
    if (!Object.keys(s.methods).length) return "Choose at least one method.";
    if (source() === "zip") {
      const zip = $("zip").files[0];
      if (!zip) return "Choose the zip of class folders.";
      if (zip.size > Number(form.dataset.maxUploadMb) * 2 ** 20) return `The zip is larger than ${form.dataset.maxUploadMb} MB: upload its folder with xaiq upload and audit the folder.`;
    } else if (!$("folder").value) {
      return "Choose a folder of your uploads.";
    }
    return null;
  }

  async function submit(e) {
    e.preventDefault();
    const form = e.target, s = spec();
    const p = problem(form, s);
    $("error").textContent = p || "";
    if (p) return;
    $("submit").disabled = true;
    let r;
    if (source() === "zip") {
      const body = new FormData();
      body.append("spec", JSON.stringify(s));
      body.append("dataset", $("zip").files[0]);
      const bar = $("upload-progress");
      bar.hidden = false;
      const sent = { loaded: 0, total: 0 };
      r = await P.post(form.dataset.auditsUrl, body, (done, total) => {
        Object.assign(sent, { loaded: done, total });
        bar.value = done / total;
        $("upload-text").textContent = `uploading ${(done / 2 ** 20).toFixed(1)} of ${(total / 2 ** 20).toFixed(1)} MB`;
      });
      if (r.status === 202) P.remember(r.body.id, $("zip").files[0].name, sent);
    } else {
      r = await P.post(form.dataset.auditsUrl, JSON.stringify({ ...s, dataset: $("folder").value }), null,
        { "Content-Type": "application/json" });
    }
    if (r.status === 202) {
      $("upload-text").textContent = "started; opening the audit…";
      window.location.assign(r.body.links.page);
      return;
    }
    $("submit").disabled = false;
    $("upload-progress").hidden = true;
    $("upload-text").textContent = "";
    $("error").textContent = P.errorText(r.status, r.body);
  }

  document.addEventListener("DOMContentLoaded", async () => {
    const form = $("audit-form");
    P.fields($("options").querySelector(".params"), JSON.parse($("options-schema").textContent));
    $("model").addEventListener("change", chooseModel);
    form.addEventListener("submit", submit);
    try {
      const all = await P.getJson(form.dataset.methodsUrl);
      P.methods($("methods"), all.methods.filter((m) => m.attribution));   // audits take attribution maps only
    } catch (err) {
      $("error").textContent = `The methods could not be loaded: ${err.message}`;
    }
    await chooseModel();
    form.dataset.ready = "1";
  });
})();
