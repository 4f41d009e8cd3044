/* imagestudio dashboard: one job (summary, bars per SKU, actions, gallery) and its timeline. */
"use strict";

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
    return ["succeeded", "partially_failed", "failed", "cancelled"].includes(job.status);
  };
  // Redrawn every 3 s while the job runs; an ended job's chart is drawn once and stays put.
  let ended = false;
  const stop = every(3000, async () => { if (!ended) ended = await draw(); });
  return { stop };
}

