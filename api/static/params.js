// Form fields built from JSON Schema (a method's parameters from GET /v1/methods, an
// audit's options), and the methods' fieldsets that follow the chosen model: methods
// the model's format cannot run are disabled with the reason, `layer` fields list the
// model's layers of the kind the method needs. Exposes window.xaiqParams.
"use strict";
(function () {
  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") e.textContent = v; else e.setAttribute(k, v === true ? "" : v);
    }
    e.append(...children);
    return e;
  }

  // The field's kind: integer, number, boolean, enum, ints (a list of integers), layer, string.
  function typeOf(name, prop) {
    const options = (prop.anyOf || [prop]).filter((p) => p.type !== "null");
    const p = options[0] || {};
    const nullable = (prop.anyOf || []).some((o) => o.type === "null");
    if (name === "layer") return { kind: "layer", nullable, p };
    if (p.enum) return { kind: "enum", nullable, p };
    if (p.type === "array") return { kind: "ints", nullable, p };
    return { kind: p.type || "string", nullable, p };
  }

  function input(name, prop, t, required) {
    const d = prop.default;
    if (t.kind === "boolean") return el("input", { type: "checkbox", name, checked: d === true });
    if (t.kind === "enum") {
      return el("select", { name }, ...t.p.enum.map((v) => el("option", { value: v, selected: v === d, text: v })));
    }
    if (t.kind === "layer") return el("select", { name, required });
    if (t.kind === "ints") return el("input", { type: "text", name, value: Array.isArray(d) ? d.join(", ") : "", placeholder: "e.g. 0, 1, 2", required });
    if (t.kind === "integer" || t.kind === "number") {
      const low = t.p.minimum ?? t.p.exclusiveMinimum, high = t.p.maximum ?? (t.p.exclusiveMaximum !== undefined && t.kind === "integer" ? t.p.exclusiveMaximum - 1 : t.p.exclusiveMaximum);
      return el("input", { type: "number", name, value: d ?? "", min: low, max: high, step: t.kind === "integer" ? 1 : "any", required });
    }
    return el("input", { type: "text", name, value: d ?? "", required });
  }

  // Fields for each property of `schema`, named `${prefix}${property}`, into `box`.
  function fields(box, schema, prefix = "") {
    const required = new Set(schema.required || []);
    for (const [name, prop] of Object.entries(schema.properties || {})) {
      const t = typeOf(name, prop);
      const field = input(prefix + name, prop, t, required.has(name));
      field.dataset.kind = t.kind;
      field.dataset.param = name;
      field.dataset.default = JSON.stringify(prop.default ?? null);
      if (t.nullable) field.dataset.nullable = "1";
      const label = el("label", { title: prop.description || "" }, el("span", { text: name + (required.has(name) ? " *" : "") }), field);
      if (prop.description) label.append(el("small", { text: prop.description }));
      box.append(label);
    }
  }

  function valueOf(field) {
    const k = field.dataset.kind, raw = field.value.trim();
    if (k === "boolean") return field.checked;
    if (raw === "") return field.dataset.nullable ? null : undefined;
    if (k === "integer") return Number.parseInt(raw, 10);
    if (k === "number") return Number.parseFloat(raw);
    if (k === "ints") return raw.split(/[\s,;]+/).filter(Boolean).map((s) => Number.parseInt(s, 10));
    return raw;
  }

  // The values of the fields in `box` that differ from their defaults (what the server would not assume).
  function read(box) {
    const out = {};
    for (const field of box.querySelectorAll("[data-param]")) {
      const v = valueOf(field);
      if (v === undefined || JSON.stringify(v) === field.dataset.default) continue;
      out[field.dataset.param] = v;
    }
    return out;
  }

  // One fieldset per method: a checkbox, the summary, the parameter fields (shown when checked).
  function methods(box, list) {
    box.replaceChildren(el("legend", { text: "Methods" }));
    for (const m of list) {
      const check = el("input", { type: "checkbox", name: "method", value: m.name, checked: m.name === "saliency" });
      const params = el("div", { class: "params" });
      fields(params, m.parameters, `${m.name}.`);
      const set = el("fieldset", { class: "method" + (check.checked ? "" : " off"), "data-method": m.name },
        el("label", {}, check, " ", el("b", { text: m.name }), " — ", el("span", { text: m.summary })),
        el("span", { class: "why error" }), params);
      set.method = m;
      check.addEventListener("change", () => set.classList.toggle("off", !check.checked));
      box.append(set);
    }
  }

  function layerFits(layer, kind) {
    if (kind === "conv") return layer.conv || layer.tokens;
    if (kind === "spatial") return layer.tokens || !layer.shape || layer.shape.length === 3;
    return true;
  }

  // Follow the chosen model: disable what its format cannot run, list its layers.
  function applyModel(box, model) {
    for (const set of box.querySelectorAll("fieldset.method")) {
      const m = set.method, check = set.querySelector("input[name=method]");
      let why = "";
      if (model && !m.formats.includes(model.format)) why = `not for ${model.format} models`;
      else if (model && m.uses_hooks && model.hooks === false) why = "this model's layers cannot be read through hooks";
      check.disabled = Boolean(why);
      if (why) { check.checked = false; set.classList.add("off"); }
      set.classList.toggle("unsupported", Boolean(why));
      set.querySelector(".why").textContent = why ? ` (${why})` : "";
      for (const sel of set.querySelectorAll("select[data-kind=layer]")) {
        const layers = ((model && model.layers) || []).filter((l) => layerFits(l, m.layer_kind));
        const first = sel.dataset.nullable ? [el("option", { value: "", text: "default (the last convolutional layer)" })] : [];
        sel.replaceChildren(...first, ...layers.map((l) => el("option", { value: l.path, text: `${l.path} (${l.type}${l.out_channels ? ", " + l.out_channels + " ch" : ""})` })));
        if (!sel.dataset.nullable && layers.length) sel.value = layers[layers.length - 1].path;
      }
    }
  }

  // {name: params} of the checked methods.
  function chosen(box) {
    const out = {};
    for (const set of box.querySelectorAll("fieldset.method")) {
      if (set.querySelector("input[name=method]").checked) out[set.dataset.method] = read(set.querySelector(".params"));
    }
    return out;
  }

  // The API's error as text: its message and each detail.
  function errorText(status, body) {
    const e = body && body.error;
    if (!e) return `HTTP ${status}`;
    const details = Array.isArray(e.details) ? e.details.map((d) => (typeof d === "object" ? `${d.loc || ""}: ${d.message || JSON.stringify(d)}` : String(d))) : [];
    return [`${e.code}: ${e.message}`, ...details.slice(0, 20)].join("\n") + (status === 401 ? "\nSign in again (the session ended)." : "");
  }

  // POST `body` with progress; resolves {status, body}.
  function post(url, body, onProgress, headers = {}) {
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
      if (onProgress) xhr.upload.addEventListener("progress", (e) => e.lengthComputable && onProgress(e.loaded, e.total));
      xhr.addEventListener("load", () => {
        let parsed = null;
        try { parsed = JSON.parse(xhr.responseText); } catch (err) { parsed = null; }
        resolve({ status: xhr.status, body: parsed });
      });
      xhr.addEventListener("error", () => resolve({ status: 0, body: { error: { code: 0, message: "the server could not be reached" } } }));
      xhr.send(body);
    });
  }

  async function getJson(url) {
    const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!r.ok) throw new Error(errorText(r.status, await r.json().catch(() => null)));
    return r.json();
  }

  // What was uploaded, kept for the next page (the job's) to say (pages.js shows it once).
  function remember(job, what, sent) {
    try {
      sessionStorage.setItem("xaiq.upload", JSON.stringify({ job, what, loaded: sent.loaded, total: sent.total }));
    } catch (err) { /* storage off: nothing to show */ }
  }

  window.xaiqParams = { el, fields, read, methods, applyModel, chosen, errorText, post, getJson, remember };
})();
