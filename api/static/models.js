// The models page: register a model (POST /v1/models, multipart with the weights and the
// spec, upload progress), then follow it until a worker has checked it.
"use strict";
(function () {
  const P = window.xaiqParams;
  const $ = (id) => document.getElementById(id);

  function numbers(text) {
    return text.split(/[\s,;]+/).filter(Boolean).map(Number);
  }

  function spec() {
    const s = { name: $("model-name").value.trim(), architecture: $("architecture").value };
    const size = ["channels", "height", "width"].map((id) => $(id).value.trim());
    if (size.every(Boolean)) {
      s.input = { channels: Number(size[0]), height: Number(size[1]), width: Number(size[2]) };
    }
    for (const k of ["mean", "std"]) if ($(k).value.trim()) s[k] = numbers($(k).value);
    const classes = $("classes").value.split(/[\n,]+/).map((c) => c.trim()).filter(Boolean);
    if (classes.length) s.classes = classes;
    return s;
  }

  async function follow(name, url) {
    for (let i = 0; i < 600; i++) {
      const info = await P.getJson(url);
      if (info.status !== "registering") return info;
      $("result").textContent = `registering ${name}: a worker is checking it… (${i + 1} s)`;
      await new Promise((r) => setTimeout(r, 1000));
    }
    return null;
  }

  async function register(e) {
    e.preventDefault();
    const form = e.target, s = spec(), weights = $("weights").files[0];
    $("error").textContent = !weights ? "Choose the weights file." : !s.name ? "Give the model a name." : "";
    if ($("error").textContent) return;
    const body = new FormData();
    body.append("spec", JSON.stringify(s));
    body.append("weights", weights);
    const query = [$("replace").checked && "replace=1", $("shared") && $("shared").checked && "shared=1"].filter(Boolean).join("&");
    $("register").disabled = true;
    const bar = $("upload-progress");
    bar.hidden = false;
    const r = await P.post(form.dataset.modelsUrl + (query ? "?" + query : ""), body, (done, total) => { bar.value = done / total; });
    bar.hidden = true;
    $("register").disabled = false;
    if (r.status !== 202) { $("error").textContent = P.errorText(r.status, r.body); return; }
    const url = `${form.dataset.modelsUrl}/${encodeURIComponent(s.name)}`;
    const info = await follow(s.name, url).catch((err) => { $("error").textContent = err.message; return null; });
    const page = `${form.dataset.pageUrl}/${encodeURIComponent(s.name)}`;
    const link = P.el("a", { href: page, id: "result-link", text: s.name });
    const status = info ? P.el("span", { class: `status ${info.status}`, id: "result-status", text: info.status }) : "still registering";
    $("result").replaceChildren(link, ": ", status, info && info.error ? ` — ${info.error}` : "");
  }

  document.addEventListener("DOMContentLoaded", () => {
    const sync = () => { $("hf-note").hidden = $("architecture").value !== "huggingface"; };
    $("architecture").addEventListener("change", sync);
    sync();
    $("register-form").addEventListener("submit", register);
    $("register-form").dataset.ready = "1";
  });
})();
