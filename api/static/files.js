// Reading what a user drops or picks: folders recursively (DataTransfer entries or a
// webkitdirectory input), zips (read here: the central directory, stored or deflated
// entries), and each file's first bytes, to keep PNG and JPEG images and say why the
// rest is skipped. Exposes window.xaiqFiles.
"use strict";
(function () {
  const PNG = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

  async function kind(blob) {
    const b = new Uint8Array(await blob.slice(0, 8).arrayBuffer());
    if (PNG.every((v, i) => b[i] === v)) return "png";
    if (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return "jpeg";
    if (b[0] === 0x50 && b[1] === 0x4b && b[2] === 0x03 && b[3] === 0x04) return "zip";
    return null;
  }

  function hidden(path) {
    return path.split("/").some((p) => p.startsWith(".") || p === "__MACOSX" || p === "Thumbs.db");
  }

  function fileOf(entry) {
    return new Promise((resolve, reject) => entry.file(resolve, reject));
  }

  function readBatch(reader) {
    return new Promise((resolve, reject) => reader.readEntries(resolve, reject));
  }

  async function walk(entry, out) {
    if (entry.isFile) {
      out.push({ file: await fileOf(entry), path: entry.fullPath.replace(/^\/+/, "") });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (let batch = await readBatch(reader); batch.length; batch = await readBatch(reader)) {
        for (const child of batch) await walk(child, out);   // readEntries gives at most 100 at a time
      }
    }
  }

  // A drop: the entries must be taken before the first await (the list is emptied after the event).
  async function fromDrop(dataTransfer) {
    const entries = [...dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
    const files = [...dataTransfer.files];
    const out = [];
    if (entries.length) {
      for (const e of entries) await walk(e, out);
    } else {
      for (const f of files) out.push({ file: f, path: f.name });
    }
    return out;
  }

  function fromInput(input) {
    return [...input.files].map((f) => ({ file: f, path: f.webkitRelativePath || f.name }));
  }

  // --- zip --------------------------------------------------------------------------------
  function endOfDirectory(view) {
    for (let i = view.byteLength - 22; i >= Math.max(0, view.byteLength - 65557); i--) {
      if (view.getUint32(i, true) === 0x06054b50) return i;
    }
    return -1;
  }

  async function directory(blob) {
    const tailStart = Math.max(0, blob.size - 65557);
    const tail = new DataView(await blob.slice(tailStart).arrayBuffer());
    const at = endOfDirectory(tail);
    if (at < 0) throw new Error("not a readable zip (no central directory)");
    const count = tail.getUint16(at + 10, true), size = tail.getUint32(at + 12, true);
    const offset = tail.getUint32(at + 16, true);
    if (offset === 0xffffffff || count === 0xffff) throw new Error("a ZIP64 archive: not read in the browser (send it to an audit, or unzip it)");
    return { view: new DataView(await blob.slice(offset, offset + size).arrayBuffer()), count };
  }

  function entriesOf(dir) {
    const out = [];
    const utf8 = new TextDecoder("utf-8"), latin1 = new TextDecoder("latin1");
    let p = 0;
    for (let n = 0; n < dir.count && p + 46 <= dir.view.byteLength; n++) {
      const v = dir.view;
      if (v.getUint32(p, true) !== 0x02014b50) break;
      const flags = v.getUint16(p + 8, true), method = v.getUint16(p + 10, true);
      const csize = v.getUint32(p + 20, true), nameLen = v.getUint16(p + 28, true);
      const extraLen = v.getUint16(p + 30, true), commentLen = v.getUint16(p + 32, true);
      const local = v.getUint32(p + 42, true);
      const raw = new Uint8Array(v.buffer, v.byteOffset + p + 46, nameLen);
      const name = (flags & 0x800 ? utf8 : latin1).decode(raw);
      out.push({ name, flags, method, csize, local });
      p += 46 + nameLen + extraLen + commentLen;
    }
    return out;
  }

  async function entryBlob(blob, e) {
    const head = new DataView(await blob.slice(e.local, e.local + 30).arrayBuffer());
    const start = e.local + 30 + head.getUint16(26, true) + head.getUint16(28, true);
    const data = blob.slice(start, start + e.csize);
    if (e.method === 0) return data;
    return new Response(data.stream().pipeThrough(new DecompressionStream("deflate-raw"))).blob();
  }

  // The zip's files as {file, path} (paths inside the zip), and its entries that cannot be read.
  async function unzip(file, zipPath) {
    const found = [], skipped = [];
    const dir = await directory(file);
    for (const e of entriesOf(dir)) {
      const where = `${zipPath}: ${e.name}`;
      if (e.name.endsWith("/")) continue;
      if (e.flags & 1) { skipped.push({ path: where, why: "encrypted zip entry" }); continue; }
      if (e.method !== 0 && e.method !== 8) { skipped.push({ path: where, why: `zip compression method ${e.method} is not supported (only stored and deflate)` }); continue; }
      if (e.csize === 0xffffffff) { skipped.push({ path: where, why: "a ZIP64 entry: not read in the browser" }); continue; }
      try {
        const base = e.name.split("/").pop();
        found.push({ file: new File([await entryBlob(file, e)], base), path: e.name });
      } catch (err) {
        skipped.push({ path: where, why: `could not be decompressed (${err.message || err})` });
      }
    }
    return { found, skipped };
  }

  // --- sorting the kept from the skipped ----------------------------------------------
  async function classify(list, opts = {}) {
    const images = [], skipped = [], seen = new Set();
    for (const { file, path } of list) {
      if (hidden(path)) { skipped.push({ path, why: "hidden or system file" }); continue; }
      if (!file.size) { skipped.push({ path, why: "empty file" }); continue; }
      const k = await kind(file);
      if (k === "zip" && opts.zips !== false) {
        try {
          const inner = await unzip(file, path);
          skipped.push(...inner.skipped);
          const sub = await classify(inner.found, { zips: false });
          for (const img of sub.images) {
            if (seen.has(img.path)) skipped.push({ path: `${path}: ${img.path}`, why: "the same path twice" });
            else { seen.add(img.path); images.push(img); }
          }
          skipped.push(...sub.skipped.map((s) => ({ path: `${path}: ${s.path}`, why: s.why })));
        } catch (err) {
          skipped.push({ path, why: err.message || String(err) });
        }
        continue;
      }
      if (k !== "png" && k !== "jpeg") {
        const named = /\.(png|jpe?g)$/i.test(path);
        skipped.push({ path, why: k === "zip" ? "a zip inside a zip" : named ? "named like an image but not a PNG or JPEG inside" : "not a PNG or JPEG image" });
        continue;
      }
      if (seen.has(path)) { skipped.push({ path, why: "the same path twice" }); continue; }
      seen.add(path);
      images.push({ file, path, kind: k });
    }
    images.sort((a, b) => a.path.localeCompare(b.path, undefined, { numeric: true }));
    return { images, skipped };
  }

  // The folder an image is in (its class, for labels from folders); "" at the top.
  function folderOf(path) {
    const parts = path.split("/");
    return parts.length > 1 ? parts[parts.length - 2] : "";
  }

  window.xaiqFiles = { fromDrop, fromInput, classify, folderOf, kind };
})();
