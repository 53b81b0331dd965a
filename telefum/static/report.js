// The marketer's report: /report.json in, a table and an inline SVG chart out.
"use strict";

(function () {
  const token = new URLSearchParams(location.search).get("token") || "";
  const tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795", "#b7791f", "#718096"];
  const FIGS = ["calls", "answered", "missed", "new_contacts", "first_calls", "repeat_calls", "median_wait_s"];

  function cell(tag, text, cls) {
    const c = document.createElement(tag);
    c.textContent = text === null || text === undefined ? "–" : String(text);
    if (cls) c.className = cls;
    return c;
  }

  function row(values, testid) {
    const tr = document.createElement("tr");
    if (testid) tr.dataset.testid = testid;
    values.forEach((v, i) => tr.append(cell("td", v, i >= values.length - FIGS.length ? "num" : "")));
    return tr;
  }

  function label(r) { return (r.tracking_number || "(unknown)") + " · " + r.source; }

  function svg(tag, attrs, text) {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    return n;
  }

  // Stacked bars: one bar per day, one colour per tracking number/source, height = calls.
  function chart(report) {
    const series = report.numbers.filter((r) => r.calls).map(label);  // a row of zeros has no bar
    const days = [...new Set([...(report.period_days || []), ...report.days.map((d) => d.day)])].sort();
    const box = $("chart");
    box.replaceChildren();
    $("legend").replaceChildren();
    if (!report.days.length) { box.append(cell("p", "No calls in this period.", "quiet")); return; }
    const perDay = days.map((day) => report.days.filter((d) => d.day === day));
    const max = Math.max(1, ...perDay.map((ds) => ds.reduce((s, d) => s + d.calls, 0)));
    // right: room for half of the last day's label, centred under its bar
    const W = 720, H = 240, left = 36, right = 20, bottom = 28, top = 10;
    const slot = (W - left - right) / days.length, bw = Math.max(4, Math.min(48, slot * 0.7));
    const y = (v) => top + (H - top - bottom) * (1 - v / max);
    const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "calls per day by source"});
    for (const v of [0, Math.ceil(max / 2), max]) {
      root.append(svg("line", {x1: left, x2: W - right, y1: y(v), y2: y(v), class: "grid"}));
      root.append(svg("text", {x: left - 6, y: y(v) + 4, "text-anchor": "end", class: "axis"}, String(v)));
    }
    days.forEach((day, i) => {
      const x = left + slot * i + (slot - bw) / 2;
      let acc = 0;
      for (const d of perDay[i]) {
        const k = series.indexOf(label(d));
        const rect = svg("rect", {x, width: bw, y: y(acc + d.calls), height: y(acc) - y(acc + d.calls),
                                  fill: COLORS[k % COLORS.length], "data-day": day, "data-calls": d.calls});
        rect.append(svg("title", {}, `${day} · ${label(d)}: ${d.calls} calls, ${d.answered} answered, ${d.missed} missed, ${d.new_contacts} new`));
        root.append(rect);
        acc += d.calls;
      }
      const every = Math.ceil(days.length / 15);  // at most ~15 labels
      if (i % every === 0 || i === days.length - 1) {
        root.append(svg("text", {x: x + bw / 2, y: H - 10, "text-anchor": "middle", class: "axis"}, day.slice(5)));
      }
    });
    box.append(root);
    series.forEach((s, k) => {
      const item = document.createElement("span");
      const sw = document.createElement("i");
      sw.style.background = COLORS[k % COLORS.length];
      item.append(sw, s);
      $("legend").append(item);
    });
  }

  function csv(report) {
    const head = ["tracking_number", "source", ...FIGS];
    const lines = [head.join(",")].concat(report.numbers.map((r) =>
      head.map((k) => { const v = r[k] === null ? "" : String(r[k]); return /[",\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }).join(",")));
    return "data:text/csv;charset=utf-8," + encodeURIComponent(lines.join("\n") + "\n");
  }

  function render(report) {
    const body = $("numbers").tBodies[0];
    body.replaceChildren(...report.numbers.map((r) =>
      row([r.tracking_number || "(unknown)", r.source, ...FIGS.map((k) => r[k])], "number-row")));
    const t = report.totals;
    $("numbers").tFoot.replaceChildren(row(["Total", "", ...FIGS.map((k) => t[k])], "total-row"));
    $("days").tBodies[0].replaceChildren(...report.days.map((d) =>
      row([d.day, d.tracking_number || "(unknown)", d.source, ...FIGS.map((k) => d[k])])));
    chart(report);
    $("csv").href = csv(report);
    $("status").textContent = `From ${report.since} to ${report.until} (${report.tz}).`;
    document.body.dataset.loaded = "1";
  }

  async function load() {
    const since = $("since").value;
    const q = new URLSearchParams({token, since, tz});
    const resp = await fetch("/report.json?" + q.toString());
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) { $("status").textContent = "Could not load the report: " + (data.error || resp.status); return; }
    render(data);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const want = new URLSearchParams(location.search).get("since");
    if (want && [...$("since").options].some((o) => o.value === want)) $("since").value = want;
    $("since").addEventListener("change", load);
    load();
  });
})();
