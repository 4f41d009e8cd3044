/* imagestudio dashboard: the jobs list, the providers, and the routing by URL hash:
 * #/jobs, #/jobs/<id>, #/jobs/<id>/timeline, #/providers. */
"use strict";

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
