/* The AI-call timeline chart on a canvas, no library.
 * Top: calls in flight over time (a step line) against the key's window now (dashed).
 * Below: one row per image (jobs up to MAX_IMAGE_ROWS images), else one row per slot (calls
 * packed into the first free lane); every attempt a bar coloured AND patterned by outcome,
 * so colour is never the only cue. Hover shows the attempt. */
"use strict";

(function () {
  const OUTCOMES = [
    { key: "succeeded", label: "succeeded", color: "#2e7d32", pattern: "solid" },
    { key: "retry", label: "retry (error, backed off)", color: "#ef6c00", pattern: "stripes" },
    { key: "snoozed", label: "429 snooze", color: "#6a1b9a", pattern: "dots" },
    { key: "failed", label: "failed", color: "#c62828", pattern: "cross" },
    { key: "lost", label: "lost (worker died)", color: "#546e7a", pattern: "hlines" },
    { key: "cancelled", label: "cancelled", color: "#37474f", pattern: "vlines" },
    { key: "released", label: "released (worker stopped)", color: "#90a4ae", pattern: "hlines" },
    { key: "running", label: "running", color: "#1565c0", pattern: "outline" },
  ];
  const BY_KEY = Object.fromEntries(OUTCOMES.map((o) => [o.key, o]));
  const MAX_IMAGE_ROWS = 60;
  const MAX_LANES = 64;
  const TOP = 110; // height of the in-flight chart
  const LEFT = 90;
  const ROW = 14;

  function tile(o) {
    const c = document.createElement("canvas");
    c.width = 8;
    c.height = 8;
    const g = c.getContext("2d");
    g.fillStyle = o.color;
    g.globalAlpha = o.pattern === "outline" ? 0.25 : 1;
    g.fillRect(0, 0, 8, 8);
    g.globalAlpha = 1;
    g.strokeStyle = "rgba(255,255,255,0.85)";
    g.fillStyle = "rgba(255,255,255,0.85)";
    g.lineWidth = 2;
    const line = (x1, y1, x2, y2) => { g.beginPath(); g.moveTo(x1, y1); g.lineTo(x2, y2); g.stroke(); };
    if (o.pattern === "stripes") { line(0, 8, 8, 0); line(-4, 4, 4, -4); line(4, 12, 12, 4); }
    if (o.pattern === "dots") { g.beginPath(); g.arc(4, 4, 1.6, 0, Math.PI * 2); g.fill(); }
    if (o.pattern === "cross") { line(0, 0, 8, 8); line(0, 8, 8, 0); }
    if (o.pattern === "hlines") line(0, 4, 8, 4);
    if (o.pattern === "vlines") line(4, 0, 4, 8);
    return c;
  }

  function swatch(o) {
    const c = tile(o);
    c.setAttribute("aria-hidden", "true");
    c.className = "swatch";
    return c;
  }

  function lineSwatch(kind) {
    const c = document.createElement("canvas");
    c.width = 24;
    c.height = 8;
    c.className = "swatch";
    c.setAttribute("aria-hidden", "true");
    const g = c.getContext("2d");
    g.strokeStyle = kind === "window" ? "#c62828" : "#1565c0";
    g.lineWidth = 2;
    if (kind === "window") g.setLineDash([4, 3]);
    g.beginPath(); g.moveTo(0, 4); g.lineTo(24, 4); g.stroke();
    return c;
  }

  function times(c, now) {
    const s = Date.parse(c.call_start || c.start);
    const e = c.call_end || c.end ? Date.parse(c.call_end || c.end) : now;
    return [s, Math.max(e, s)];
  }

  function lanes(calls, now) {
    const ends = [];
    return calls.map((c) => {
      const [s, e] = times(c, now);
      let lane = ends.findIndex((t) => t <= s);
      if (lane < 0) { lane = ends.length; ends.push(e); } else ends[lane] = e;
      return Math.min(lane, MAX_LANES - 1);
    });
  }

  function inflight(calls, now) {
    const steps = [];
    for (const c of calls) {
      const [s, e] = times(c, now);
      steps.push([s, 1], [e, -1]);
    }
    steps.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    const points = [];
    let n = 0;
    let peak = 0;
    for (const [t, d] of steps) { n += d; peak = Math.max(peak, n); points.push([t, n]); }
    return { points, peak };
  }

  function draw(canvas, tip, calls, job) {
    const now = Date.now();
    const byImage = job.counts.total <= MAX_IMAGE_ROWS;
    const rowOf = byImage ? calls.map((c) => c.position) : lanes(calls, now);
    const nRows = Math.max(1, byImage ? job.counts.total : Math.max(0, ...rowOf) + 1);
    const width = canvas.parentElement.clientWidth || 1000;
    const height = TOP + 30 + nRows * ROW + 10;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    g.font = "11px system-ui, sans-serif";
    const spans = calls.map((c) => times(c, now));
    const t0 = spans.length ? Math.min(...spans.map((s) => s[0])) : Date.parse(job.created_at);
    const t1 = spans.length ? Math.max(...spans.map((s) => s[1])) : t0 + 1000;
    const span = Math.max(1, t1 - t0);
    const plot = width - LEFT - 10;
    const x = (t) => LEFT + ((t - t0) / span) * plot;
    const flight = inflight(calls, now);
    const win = job.governor ? job.governor.window : null;
    const top = Math.max(1, flight.peak, win || 0);
    const y = (n) => TOP - 10 - (n / top) * (TOP - 30);
    // axes and labels
    g.fillStyle = "#222";
    g.fillText("in flight", 4, 14);
    g.fillText(`${top.toFixed(0)}`, LEFT - 24, y(top) + 4);
    g.fillText("0", LEFT - 24, y(0) + 4);
    g.strokeStyle = "#bbb";
    g.lineWidth = 1;
    g.beginPath(); g.moveTo(LEFT, y(0)); g.lineTo(width - 10, y(0)); g.stroke();
    if (win) {
      g.strokeStyle = "#c62828";
      g.setLineDash([6, 4]);
      g.beginPath(); g.moveTo(LEFT, y(win)); g.lineTo(width - 10, y(win)); g.stroke();
      g.setLineDash([]);
      g.fillStyle = "#c62828";
      g.fillText(`window now ${win.toFixed(1)}`, width - 120, y(win) - 4);
    }
    g.strokeStyle = "#1565c0";
    g.lineWidth = 2;
    g.beginPath();
    let prev = 0;
    g.moveTo(x(t0), y(0));
    for (const [t, n] of flight.points) { g.lineTo(x(t), y(prev)); g.lineTo(x(t), y(n)); prev = n; }
    g.lineTo(x(t1), y(prev));
    g.stroke();
    // time axis
    g.fillStyle = "#222";
    const base = TOP + 14;
    for (let i = 0; i <= 5; i++) {
      const t = t0 + (span * i) / 5;
      g.fillText(`${((t - t0) / 1000).toFixed(1)} s`, x(t) - (i === 5 ? 34 : 12), base);
    }
    g.fillText(byImage ? "image" : "slot", 4, base);
    // rows
    const patterns = Object.fromEntries(OUTCOMES.map((o) => [o.key, g.createPattern(tile(o), "repeat")]));
    const rects = [];
    const rowTop = TOP + 24;
    if (byImage && nRows <= MAX_IMAGE_ROWS) {
      const names = {};
      calls.forEach((c) => { names[c.position] = `${c.sku}/${c.stem}`; });
      for (let r = 0; r < nRows; r++) {
        g.fillStyle = "#444";
        g.fillText((names[r] || `#${r + 1}`).slice(0, 13), 4, rowTop + r * ROW + 10);
      }
    }
    calls.forEach((c, i) => {
      const o = BY_KEY[c.outcome || "running"] || BY_KEY.running;
      const [s, e] = spans[i];
      const rx = x(s);
      const rw = Math.max(2, x(e) - rx);
      const ry = rowTop + rowOf[i] * ROW + 1;
      g.fillStyle = patterns[o.key];
      g.fillRect(rx, ry, rw, ROW - 3);
      g.strokeStyle = o.color;
      g.lineWidth = 1;
      g.strokeRect(rx + 0.5, ry + 0.5, rw - 1, ROW - 4);
      rects.push([rx, ry, rw, ROW - 3, c, o]);
    });
    if (rects.length) { // where the first call's bar is, for a pointer (or a test) to find
      const [rx, ry, rw, rh] = rects[0];
      canvas.dataset.firstBar = `${Math.round(rx + rw / 2)},${Math.round(ry + rh / 2)}`;
    }
    canvas.onmousemove = (ev) => {
      const box = canvas.getBoundingClientRect();
      const px = ev.clientX - box.left;
      const py = ev.clientY - box.top;
      const hit = rects.find(([rx, ry, rw, rh]) => px >= rx && px <= rx + rw && py >= ry && py <= ry + rh);
      if (!hit) { tip.hidden = true; return; }
      const c = hit[4];
      const secs = c.call_seconds ?? c.seconds;
      tip.textContent = `${c.sku}/${c.stem} · attempt ${c.attempt} · ${hit[5].label}` +
        (secs != null ? ` · ${secs.toFixed(2)} s` : "") + ` · worker ${c.worker}` +
        (c.wait_seconds ? ` · waited ${c.wait_seconds.toFixed(2)} s` : "") + (c.error ? ` · ${c.error}` : "");
      tip.hidden = false;
      tip.style.left = `${Math.min(px + 12, width - 320)}px`;
      tip.style.top = `${py + 12}px`;
    };
    canvas.onmouseleave = () => { tip.hidden = true; };
    const seconds = (span / 1000).toFixed(1);
    const counts = {};
    calls.forEach((c) => { const k = c.outcome || "running"; counts[k] = (counts[k] || 0) + 1; });
    const told = Object.entries(counts).map(([k, n]) => `${n} ${(BY_KEY[k] || { label: k }).label}`).join(", ");
    const summary = `${calls.length} calls over ${seconds} s, at most ${flight.peak} in flight` +
      (win ? ` (key's window now ${win.toFixed(1)})` : "") + (told ? `: ${told}` : "") +
      (byImage ? "; one row per image" : "; one row per slot");
    canvas.dataset.peak = String(flight.peak);
    canvas.dataset.calls = String(calls.length);
    return { summary, t0, peak: flight.peak };
  }

  window.Timeline = { OUTCOMES, swatch, lineSwatch, draw };
})();
