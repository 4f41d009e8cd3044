/* imagestudio dashboard: plain JavaScript, no build step, no third-party code.
 * Views by URL hash: #/jobs, #/jobs/<id>, #/jobs/<id>/timeline, #/providers.
 * Every call goes to this service's API with the token typed in (sessionStorage). */
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

// -- Jobs --------------------------------------------------------------------------------------

function jobsView(params) {
  const status = params.get("status") || "";
  const offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
  const filter = h("select", { id: "status-filter", name: "status" },
    h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, s.replace("_", " "))));
  filter.addEventListener("change", () => { location.hash = `#/jobs?status=${filter.value}`; });
  const body = h("tbody");
  const table = h("table", { class: "jobs" },
    h("caption", {}, "Your jobs, newest first"),
    h("thead", {}, h("tr", {}, ["Job", "Status", "Progress", "Counts", "Age", "Error"].map((t) => h("th", { scope: "col" }, t)))),
    body);
  const pager = h("nav", { class: "pager", "aria-label": "Job pages" });
  const message = h("div");
  main.replaceChildren(
    h("h2", {}, "Jobs"),
    h("div", { class: "filters" }, h("label", { for: "status-filter" }, "Status"), filter),
    message, table, pager);
  const q = `?limit=${JOBS_PAGE}&offset=${offset}` + (status ? `&status=${status}` : "");
  const stop = every(2000, async () => {
    let jobs;
    try {
      jobs = (await api(`/jobs${q}`)).jobs;
      message.replaceChildren();
    } catch (e) {
      message.replaceChildren(errorBox(e));
      body.replaceChildren();
      return;
    }
    body.replaceChildren(...jobs.map(jobRow));
    if (!jobs.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No jobs here.")));
    const link = (o, text) => h("a", { href: `#/jobs?status=${status}&offset=${o}` }, text);
    pager.replaceChildren(
      offset > 0 ? link(Math.max(0, offset - JOBS_PAGE), "← Newer") : "",
      h("span", { class: "muted" }, ` jobs ${offset + 1}–${offset + jobs.length} `),
      jobs.length === JOBS_PAGE ? link(offset + JOBS_PAGE, "Older →") : "");
  });
  return { stop };
}

function jobRow(j) {
  const c = j.counts || { succeeded: j.completed, failed: 0, cancelled: 0, total: j.total };
  const finished = j.finished ?? done(c);
  return h("tr", { "data-job": j.job_id },
    h("th", { scope: "row" }, h("a", { href: `#/jobs/${encodeURIComponent(j.job_id)}` }, j.job_id)),
    h("td", {}, statusBadge(j.status)),
    h("td", {}, bar(finished, j.total, `progress of ${j.job_id}`), ` ${finished}/${j.total}`),
    h("td", { class: "counts" }, j.counts
      ? `${c.succeeded} ok · ${c.failed} failed · ${c.running} running · ${c.queued} queued`
      : `${j.completed} ok`),
    h("td", {}, h("time", { datetime: j.created_at, title: j.created_at }, age(j.created_at))),
    h("td", { class: "error-cell" }, j.error || ""));
}

// -- One job -------------------------------------------------------------------------------

function jobView(jobId) {
  const enc = encodeURIComponent(jobId);
  const summary = h("div", { class: "summary" });
  const skus = h("div", { class: "skus" });
  const actions = h("div", { class: "actions", role: "group", "aria-label": "Job actions" });
  const note = h("div", { class: "note" });
  const gallery = h("ul", { class: "gallery" });
  const pager = h("nav", { class: "pager", "aria-label": "Image pages" });
  const liveState = h("p", { class: "muted", id: "sse-state", "data-sse-events": "0" }, "connecting…");
  // SKUs are laid out one after another by position: a SKU's first image is the sum before it.
  const skuSelect = h("select", { id: "sku-jump" });
  const jump = h("div", { class: "filters" }, h("label", { for: "sku-jump" }, "Jump to SKU"), skuSelect);
  skuSelect.addEventListener("change", () => { offset = Number(skuSelect.value) || 0; refreshImages(); });
  let offset = 0;
  let job = null;
  main.replaceChildren(
    h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")),
    h("h2", {}, `Job ${jobId}`),
    summary, liveState, actions, note,
    h("h3", {}, "Progress per SKU"), skus,
    h("h3", { id: "gallery-title" }, "Images"), jump, pager, gallery);

  const cancel = h("button", { type: "button", id: "cancel" }, "Cancel job");
  const retry = h("button", { type: "button", id: "retry" }, "Retry failed");
  const zip = h("button", { type: "button", id: "download" }, "Download results (zip)");
  const timeline = h("a", { href: `#/jobs/${enc}/timeline`, class: "button", id: "timeline-link" }, "Timeline chart");
  actions.append(cancel, retry, zip, timeline);
  cancel.addEventListener("click", async () => {
    try {
      job = await api(`/jobs/${enc}/cancel`, { method: "POST" });
      announce(`job ${jobId} ${job.status}`);
      render();
    } catch (e) { note.replaceChildren(errorBox(e)); }
  });
  retry.addEventListener("click", () => doRetry(null));
  zip.addEventListener("click", download);

  async function doRetry(key) {
    try {
      const out = await api(`/jobs/${enc}/retry`, { method: "POST", body: key ? { api_key: key } : {} });
      job = out.job;
      note.replaceChildren(h("p", { role: "status" }, `${out.requeued} image(s) queued again.`));
      announce(`${out.requeued} images queued again`);
      render();
      refreshImages();
      if (out.requeued) connect(); // the stream ended with the job: follow the retry
    } catch (e) {
      if (e.status === 422 && e.body && e.body.error && /api_key/.test(JSON.stringify(e.body.detail))) askKey();
      else note.replaceChildren(errorBox(e));
    }
  }

  function askKey() {
    const input = h("input", { id: "retry-key", type: "password", required: true, autocomplete: "off" });
    const form = h("form", { class: "ask-key" },
      h("p", {}, "The job's API key was erased when it ended. Enter it again to retry."),
      h("label", { for: "retry-key" }, "Provider API key"), input,
      h("button", { type: "submit" }, "Retry with this key"));
    form.addEventListener("submit", (ev) => { ev.preventDefault(); doRetry(input.value); });
    note.replaceChildren(form);
    input.focus();
  }

  async function download() {
    const res = await fetch(`${API}/jobs/${enc}/results.zip`, { headers: headers() });
    if (!res.ok) { note.replaceChildren(errorBox(new ApiError(res.status, null))); return; }
    const url = URL.createObjectURL(await res.blob());
    const a = h("a", { href: url, download: `${jobId}-results.zip` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function render() {
    if (!job) return;
    const c = job.counts;
    summary.replaceChildren(
      h("p", {}, statusBadge(job.status), " ", bar(done(c), c.total, "job progress"),
        ` ${done(c)}/${c.total} done: ${c.succeeded} succeeded, ${c.failed} failed, ${c.cancelled} cancelled, ${c.running} running, ${c.queued} queued`),
      h("p", { class: "muted" }, `${job.provider.model} at ${job.provider.api_base} · ${job.output.width}×${job.output.height} ${job.output.format} · created `,
        h("time", { datetime: job.created_at }, age(job.created_at))),
      job.error ? h("p", { class: "error" }, `Error: ${job.error}`) : "");
    cancel.disabled = ["succeeded", "partially_failed", "failed", "cancelled"].includes(job.status);
    retry.disabled = c.failed === 0;
    skus.replaceChildren(...job.skus.map((s) => h("div", { class: "sku", "data-sku": s.sku },
      h("span", { class: "sku-name", id: `sku-${s.sku}` }, s.sku),
      bar(done(s), s.total, `SKU ${s.sku} progress`),
      h("span", { class: "sku-count" }, `${done(s)}/${s.total}`, s.running ? ` · ${s.running} running` : "", s.failed ? ` · ${s.failed} failed` : ""))));
    if (skuSelect.options.length !== job.skus.length) {
      let start = 0;
      skuSelect.replaceChildren(...job.skus.map((sk) => {
        const option = h("option", { value: start }, `${sk.sku} (${sk.total})`);
        start += sk.total;
        return option;
      }));
    }
    jump.hidden = job.skus.length < 2;
    if (job.skus_truncated) skus.append(h("p", { class: "muted" }, "Per-SKU bars are left out for jobs over 5,000 images."));
  }

  async function refreshImages() {
    const page = await api(`/jobs/${enc}/images?offset=${offset}&limit=${GALLERY_PAGE}`);
    gallery.replaceChildren(...page.images.map(card));
    const goto = (o, text, id) => h("button", { type: "button", id, onclick: () => { offset = o; refreshImages(); } }, text);
    const last = Math.max(0, Math.floor((page.total - 1) / GALLERY_PAGE) * GALLERY_PAGE);
    pager.replaceChildren(
      goto(0, "First", "page-first"), goto(Math.max(0, offset - GALLERY_PAGE), "← Previous", "page-prev"),
      h("span", { class: "muted", id: "page-info" }, ` images ${page.total ? offset + 1 : 0}–${offset + page.images.length} of ${page.total} `),
      goto(page.next_offset ?? offset, "Next →", "page-next"), goto(last, "Last", "page-last"));
  }

  let pending = null;
  function soon() { // events arrive in bursts: one refresh per half second at most
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      try {
        job = await api(`/jobs/${enc}`);
        render();
        await refreshImages();
      } catch (e) { note.replaceChildren(errorBox(e)); }
    }, 500);
  }

  const stops = [];
  let events = 0;
  let closeStream = () => {};
  function connect() {
    closeStream();
    closeStream = stream(`/jobs/${enc}/events`, (ev) => {
      events += 1;
      liveState.dataset.sseEvents = String(events);
      liveState.textContent = ev.event === "end" ? `job ended: ${ev.json && ev.json.status}` : `live: ${events} events`;
      if (ev.event === "snapshot" && ev.json) { job = ev.json; render(); }
      if (ev.event !== "snapshot") soon();
    });
  }
  stops.push(() => closeStream());
  (async () => {
    try {
      job = await api(`/jobs/${enc}`);
      render();
      await refreshImages();
    } catch (e) {
      main.replaceChildren(h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")), errorBox(e));
      return;
    }
    connect();
    // Waiting reasons change without events (a pace slot, a cooldown ending): poll them too.
    stops.push(every(3000, async () => { if (job && !["succeeded", "failed", "cancelled", "partially_failed"].includes(job.status)) await refreshImages(); }));
  })();
  return { stop() { stops.forEach((s) => s()); clearTimeout(pending); } };
}

function card(img) {
  const open = h("button", { type: "button", class: "thumbs", "aria-label": `Show ${img.sku} ${img.stem} full size` },
    image(img.source_url, `source ${img.stem}`, "thumb"),
    h("span", { "aria-hidden": "true", class: "arrow" }, "→"),
    img.result_url ? image(img.result_url, `result ${img.stem}`, "thumb") : h("span", { class: "thumb empty" }, img.status));
  open.addEventListener("click", () => showImage(img));
  return h("li", { class: `card st-${img.status}`, "data-position": img.position },
    open,
    h("p", { class: "card-title" }, h("strong", {}, img.sku), ` ${img.stem}`),
    h("p", {}, statusBadge(img.status), ` · ${img.attempts} attempt${img.attempts === 1 ? "" : "s"}`),
    img.waiting_reason ? h("p", { class: `waiting wk-${img.waiting_kind}` }, h("span", { class: "visually-hidden" }, "Waiting: "), img.waiting_reason) : "",
    img.error ? h("p", { class: "error-text" }, img.error) : "",
    h("details", {}, h("summary", {}, "Prompt as sent"), h("p", { class: "prompt" }, img.prompt)));
}

function showImage(img) {
  const dlg = document.getElementById("viewer");
  document.getElementById("viewer-title").textContent = `${img.sku} / ${img.stem} (${img.status})`;
  const src = document.getElementById("viewer-source");
  src.alt = `source image ${img.stem}`;
  src.src = img.source_url;
  const res = document.getElementById("viewer-result");
  res.alt = img.result_url ? `result image ${img.stem}` : "no result yet";
  if (img.result_url) res.src = img.result_url; else res.removeAttribute("src");
  document.getElementById("viewer-text").textContent = img.prompt;
  dlg.showModal();
}

// -- Timeline ---------------------------------------------------------------------------------

function timelineView(jobId) {
  const enc = encodeURIComponent(jobId);
  const canvas = h("canvas", { id: "timeline-chart", width: 1100, height: 400, role: "img", "aria-label": "AI-call timeline chart" });
  const tip = h("div", { class: "tip", role: "tooltip", hidden: true });
  const legend = h("ul", { class: "legend", "aria-label": "Legend" });
  const facts = h("p", { class: "facts", id: "timeline-facts" });
  const rows = h("tbody");
  main.replaceChildren(
    h("p", {}, h("a", { href: `#/jobs/${enc}` }, `← Job ${jobId}`)),
    h("h2", {}, `Timeline of job ${jobId}`),
    facts, legend, h("div", { class: "chart-wrap" }, canvas, tip),
    h("details", {}, h("summary", {}, "The calls as a table"),
      h("table", {}, h("thead", {}, h("tr", {}, ["#", "SKU", "Stem", "Attempt", "Start (s)", "Seconds", "Outcome", "Error"].map((t) => h("th", { scope: "col" }, t)))), rows)));
  for (const o of window.Timeline.OUTCOMES) {
    legend.append(h("li", {}, window.Timeline.swatch(o), ` ${o.label}`));
  }
  legend.append(h("li", {}, window.Timeline.lineSwatch("inflight"), " calls in flight"),
    h("li", {}, window.Timeline.lineSwatch("window"), " key's window now"));
  const draw = async () => {
    const job = await api(`/jobs/${enc}`);
    const calls = [];
    let cursor = null;
    for (let i = 0; i < 4; i++) { // up to 20,000 calls
      const page = await api(`/jobs/${enc}/timeline?limit=5000` + (cursor ? `&cursor=${cursor}` : ""));
      calls.push(...page.calls);
      cursor = page.next_cursor;
      if (!cursor) break;
    }
    const shown = window.Timeline.draw(canvas, tip, calls, job);
    facts.textContent = shown.summary;
    canvas.setAttribute("aria-label", `AI-call timeline chart: ${shown.summary}`);
    const t0 = shown.t0;
    rows.replaceChildren(...calls.slice(0, 500).map((c) => h("tr", {},
      h("td", {}, c.position + 1), h("td", {}, c.sku), h("td", {}, c.stem), h("td", {}, c.attempt),
      h("td", {}, ((Date.parse(c.start) - t0) / 1000).toFixed(2)), h("td", {}, c.seconds == null ? "running" : c.seconds.toFixed(2)),
      h("td", {}, c.outcome || "running"), h("td", {}, c.error || ""))));
  };
  const stop = every(3000, draw);
  return { stop };
}

// -- Providers ---------------------------------------------------------------------------------

function providersView() {
  const body = h("tbody");
  const message = h("div");
  main.replaceChildren(h("h2", {}, "Providers"),
    h("p", { class: "muted" }, "One row per provider key your jobs use (API base + model + key fingerprint; the key is never shown)."),
    message,
    h("table", { class: "providers" }, h("caption", {}, "Governor state, live"),
      h("thead", {}, h("tr", {}, ["Key", "API base", "Model", "Window", "In flight", "Pace", "Cooldown", "429s", "Pinned"].map((t) => h("th", { scope: "col" }, t)))),
      body));
  const stop = every(2000, async () => {
    let found;
    try { found = (await api("/providers")).providers; message.replaceChildren(); } catch (e) { message.replaceChildren(errorBox(e)); return; }
    body.replaceChildren(...found.map((p) => h("tr", { "data-key": p.key },
      h("th", { scope: "row" }, h("code", {}, p.key)), h("td", {}, p.api_base), h("td", {}, p.model),
      h("td", {}, p.window.toFixed(1)), h("td", {}, `${p.in_flight}`),
      h("td", {}, p.pace_per_minute ? `${p.pace_per_minute}/min` : "not paced"),
      h("td", {}, p.cooldown_seconds > 0 ? `${p.cooldown_seconds.toFixed(1)} s left` : "none"),
      h("td", {}, `${p.rate_limited}`), h("td", {}, p.pinned ? "yes" : "no"))));
    if (!found.length) body.append(h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No provider keys yet.")));
  });
  return { stop };
}

// -- routing ------------------------------------------------------------------------------------

function route() {
  view.stop();
  const hash = location.hash.replace(/^#/, "") || "/jobs";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  document.querySelectorAll("[data-nav]").forEach((a) => a.removeAttribute("aria-current"));
  const nav = parts[0] === "providers" ? "providers" : "jobs";
  document.querySelector(`[data-nav="${nav}"]`).setAttribute("aria-current", "page");
  if (parts[0] === "providers") view = providersView();
  else if (parts[0] === "jobs" && parts[1] && parts[2] === "timeline") view = timelineView(parts[1]);
  else if (parts[0] === "jobs" && parts[1]) view = jobView(parts[1]);
  else view = jobsView(params);
  document.title = `imagestudio: ${parts.join(" ") || "jobs"}`;
}

document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const value = document.getElementById("token").value.trim();
  if (value) sessionStorage.setItem("imagestudio.token", value); else sessionStorage.removeItem("imagestudio.token");
  document.getElementById("token").value = "";
  announce(value ? "token set" : "token cleared");
  route();
});
window.addEventListener("hashchange", () => { route(); main.focus(); });
route();
