// SRE console: live updates over Server-Sent Events, and clock bars that move between updates.
// Every update re-reads the server-rendered (escaped) fragment; no data is put into HTML here.
"use strict";
(function () {
  const body = document.body;
  const live = body.dataset.live;
  const status = document.getElementById("live-status");
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    select.addEventListener("change", () => select.form.submit());
  }
  if (!live) return;
  const target = document.getElementById("live");
  const incident = body.dataset.incident || null;
  let renderedAt = performance.now();
  let timer = null;

  function setStatus(text, on) {
    if (!status) return;
    status.textContent = text;
    status.className = "live-status " + (on ? "on" : "off");
  }

  async function refresh() {
    timer = null;
    let response;
    try {
      response = await fetch(live + (body.dataset.query || location.search), { credentials: "same-origin", headers: { Accept: "text/html" } });
    } catch (e) {
      return; // the engine is away; the event stream reconnects and asks again
    }
    if (response.status === 401) { location.href = "/console/login"; return; }
    if (!response.ok) return;
    const html = await response.text();
    const kept = {};
    for (const field of target.querySelectorAll("textarea, input:not([type=hidden])")) kept[field.id] = field.value;
    const focused = document.activeElement && document.activeElement.id;
    target.innerHTML = html;
    for (const [id, value] of Object.entries(kept)) {
      const field = document.getElementById(id);
      if (field && id) field.value = value;
    }
    if (focused) { const el = document.getElementById(focused); if (el) el.focus(); }
    renderedAt = performance.now();
    body.dataset.refreshed = String(Date.now());
  }

  function soon() { if (timer === null) timer = setTimeout(refresh, 100); }

  function duration(seconds) {
    const s = Math.floor(Math.abs(seconds));
    if (s < 60) return s + "s";
    if (s < 3600) return s < 600 ? Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s" : Math.floor(s / 60) + "m";
    if (s < 86400) return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }

  function level(f) { return f >= 1 ? "breached" : f >= 0.8 ? "red" : f >= 0.5 ? "amber" : "ok"; }

  // Running clocks fill at their business-time rate (0 while paused) until the next update.
  function tick() {
    const dt = (performance.now() - renderedAt) / 1000;
    for (const bar of target.querySelectorAll(".bar.running")) {
      const rate = parseFloat(bar.dataset.rate);
      if (!(rate > 0)) continue;
      const budget = parseFloat(bar.dataset.budget);
      const f = parseFloat(bar.dataset.fraction) + rate * dt;
      const pct = Math.min(f, 1) * 100;
      bar.querySelector(".fill").style.width = pct.toFixed(2) + "%";
      for (const name of ["ok", "amber", "red", "breached"]) bar.classList.toggle(name, name === level(f));
      const text = f >= 1 ? "breached " + duration((f - 1) * budget) + " ago" : duration((1 - f) * budget) + " left";
      const label = bar.nextElementSibling;
      if (label) label.textContent = text;
      bar.setAttribute("aria-valuenow", String(Math.round(pct)));
      bar.setAttribute("aria-valuetext", text);
    }
  }
  setInterval(tick, 1000);
  setInterval(soon, 30000); // business hours open and close, ages grow: re-read now and then

  const events = new EventSource("/console/events");
  events.addEventListener("ready", () => { setStatus("live", true); soon(); });
  events.addEventListener("change", (e) => {
    const m = JSON.parse(e.data);
    if (m.kind === "resync" || !incident || m.subject === incident) soon();
  });
  events.addEventListener("error", () => setStatus("reconnecting…", false));
})();
