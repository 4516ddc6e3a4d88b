// Every page: times in the reader's time zone, and running durations that tick.
"use strict";
(function () {
  function span(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s >= 3600) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
    if (s >= 60) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
    return `${s}s`;
  }
  function localTimes() {
    for (const t of document.querySelectorAll("time[datetime]")) {
      const d = new Date(t.dateTime);
      if (!isNaN(d)) { t.title = t.dateTime; t.textContent = d.toLocaleString(); }
    }
  }
  function tick() {
    for (const el of document.querySelectorAll("[data-since]")) {
      const since = new Date(el.dataset.since);
      if (!isNaN(since)) el.textContent = span((Date.now() - since) / 1000);
    }
  }
  // On the page of the job last submitted from this tab: what its upload sent.
  function uploaded() {
    const box = document.getElementById("uploaded");
    let rec = null;
    try { rec = JSON.parse(sessionStorage.getItem("xaiq.upload") || "null"); } catch (err) { rec = null; }
    if (!box || !rec || rec.job !== box.dataset.job) return;
    box.textContent = `Submitted ${rec.what}: ${(rec.loaded / 1024).toFixed(1)} of ${(rec.total / 1024).toFixed(1)} KB uploaded.`;
    box.dataset.loaded = rec.loaded;
    box.dataset.total = rec.total;
    box.hidden = false;
  }
  document.addEventListener("DOMContentLoaded", () => {
    localTimes();
    uploaded();
    if (document.querySelector("[data-since]")) setInterval(tick, 1000);
  });
  window.xaiqSpan = span;
})();
