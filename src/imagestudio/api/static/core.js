/* imagestudio dashboard, shared parts: DOM building, the API with the token, the SSE reader.
 * Plain scripts loaded in order (core.js, job.js, app.js), no build step, no third-party code;
 * their top-level names are shared. */
"use strict";

const API = document.body.dataset.api;
const main = document.getElementById("main");
const live = document.getElementById("live");
const STATUSES = ["queued", "running", "succeeded", "partially_failed", "failed", "cancelled"];
const JOBS_PAGE = 20;
const GALLERY_PAGE = 24;
let view = { stop() {} }; // the current view; stop() ends its timers and streams

// -- helpers ---------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function token() {
  return sessionStorage.getItem("imagestudio.token") || "";
}

function headers(extra) {
  const t = token();
  return Object.assign(t ? { Authorization: `Bearer ${t}` } : {}, extra || {});
}

class ApiError extends Error {
  constructor(status, body) {
    super(describe(status, body));
    this.status = status;
    this.body = body;
  }
}

function describe(status, body) {
  if (body && Array.isArray(body.detail)) return body.detail.map((d) => `${d.field}: ${d.msg}`).join("; ");
  if (body && body.detail) return String(body.detail);
  return `HTTP ${status}`;
}

async function api(path, opts) {
  const o = opts || {};
  const res = await fetch(API + path, {
    method: o.method || "GET",
    headers: headers(o.body ? { "Content-Type": "application/json" } : {}),
    body: o.body ? JSON.stringify(o.body) : undefined,
  });
  const text = await res.text();
  const body = text ? JSON.parse(text) : null;
  if (!res.ok) throw new ApiError(res.status, body);
  return body;
}

function announce(text) {
  live.textContent = "";
  setTimeout(() => { live.textContent = text; }, 30);
}

function age(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function statusBadge(status) {
  // Text always says the status; the colour and the symbol only repeat it.
  const mark = { queued: "○", running: "◐", succeeded: "✓", partially_failed: "◑", failed: "✗", cancelled: "⊘" }[status] || "·";
  return h("span", { class: `badge st-${status}` }, h("span", { "aria-hidden": "true" }, mark + " "), status.replace("_", " "));
}

function bar(done, total, label) {
  return h("progress", { max: Math.max(total, 1), value: done, "aria-label": label });
}

function done(c) {
  return c.succeeded + c.failed + c.cancelled;
}

function errorBox(err) {
  return h("p", { class: "error", role: "alert" }, err.status === 401 ? "This needs an API token (top right)." : err.message);
}

function every(ms, fn) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    try { await fn(); } catch (e) { console.warn(e); }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

// Images: loaded directly; when a token is set and the direct load fails, with the token.
function image(url, alt, cls) {
  const img = h("img", { alt, class: cls, loading: "lazy", decoding: "async" });
  if (!url) return img;
  img.addEventListener("error", async () => {
    if (!token() || img.dataset.tried) return;
    img.dataset.tried = "1";
    try {
      const res = await fetch(url, { headers: headers() });
      if (res.ok) img.src = URL.createObjectURL(await res.blob());
    } catch (e) { /* leave the alt text */ }
  }, { once: true });
  img.src = url;
  return img;
}

// -- Server-Sent Events over fetch (so the bearer token goes along) --------------------------

function stream(path, onEvent) {
  const ctrl = new AbortController();
  let last = null;
  const state = { events: 0, connects: 0 };
  (async () => {
    while (!ctrl.signal.aborted) {
      try {
        state.connects += 1;
        const extra = last ? { "Last-Event-ID": last } : {};
        const res = await fetch(API + path, { headers: headers(extra), signal: ctrl.signal });
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done: finished } = await reader.read();
          if (finished) break;
          buf = (buf + value).replace(/\r\n?/g, "\n");
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const ev = parseEvent(buf.slice(0, cut));
            buf = buf.slice(cut + 2);
            if (!ev) continue;
            if (ev.id) last = ev.id;
            state.events += 1;
            onEvent(ev, state);
            if (ev.event === "end") return;
          }
        }
      } catch (e) {
        if (ctrl.signal.aborted) return;
      }
      await new Promise((r) => setTimeout(r, 1000)); // reconnect, resuming after `last`
    }
  })();
  return () => ctrl.abort();
}

function parseEvent(block) {
  const ev = { event: "message", data: "", id: null };
  let any = false;
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "event") ev.event = value;
    else if (field === "data") ev.data += (ev.data ? "\n" : "") + value;
    else if (field === "id") ev.id = value;
    any = true;
  }
  if (!any) return null;
  try { ev.json = JSON.parse(ev.data); } catch (e) { ev.json = null; }
  return ev;
}

