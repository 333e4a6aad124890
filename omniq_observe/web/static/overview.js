// The overview: one row per queue and three plots, refreshed every 2 seconds.
"use strict";

(() => {
  const { el, seconds, rate, ratio, taskLink, color, getJSON, setStatus, clock } = omniq;
  let windowName = omniq.windowFromUrl();
  const charts = {};

  function cell(text, value, className) {
    const props = { text, className: className || null };
    if (value !== undefined) {
      props["data-value"] = value === null ? "null" : String(value);
      props.title = value === null ? "none" : String(value);
    }
    return el("td", props);
  }

  function row(queue) {
    const oldest = queue.oldest_running;
    const oldestCell = el("td", { className: "text" });
    if (oldest) {
      oldestCell.append(el("span", { text: seconds(oldest.age_seconds) + " ",
                                     "data-value": oldest.age_seconds }),
                        taskLink(oldest.task_id, false));
    } else {
      oldestCell.textContent = "–";
    }
    const failedClass = queue.failed > 0 ? "bad" : null;
    return el("tr", { "data-queue": queue.queue },
      el("td", { className: "text queue", text: queue.queue }),
      cell(String(queue.events), queue.events),
      cell(rate(queue.events_per_second), queue.events_per_second),
      cell(String(queue.running), queue.running),
      cell(rate(queue.completed_per_second), queue.completed_per_second),
      cell(rate(queue.failed_per_second), queue.failed_per_second, failedClass),
      cell(ratio(queue.success_ratio), queue.success_ratio),
      cell(seconds(queue.duration_seconds.p50), queue.duration_seconds.p50),
      cell(seconds(queue.duration_seconds.p95), queue.duration_seconds.p95),
      cell(seconds(queue.queue_wait_seconds.p95), queue.queue_wait_seconds.p95),
      oldestCell);
  }

  function renderTable(queues) {
    const body = document.querySelector("#queues tbody");
    const signature = JSON.stringify(queues);
    if (body.dataset.signature === signature) return;
    body.dataset.signature = signature;
    const rows = queues.map(row);
    if (!rows.length) {
      rows.push(el("tr", {}, el("td", { colspan: 11, className: "empty",
                                        text: "no events in this window" })));
    }
    body.replaceChildren(...rows);
  }

  function chart(id, times, series, format) {
    const box = document.getElementById(id);
    const names = Object.keys(series).sort();
    const key = names.join("\u0000");
    const data = [times, ...names.map((name) => series[name])];
    const width = Math.max(260, box.clientWidth);
    let current = charts[id];
    if (current && current.key === key && current.width === width) {
      current.plot.setData(data);
      return;
    }
    if (current) current.plot.destroy();
    box.replaceChildren();
    if (!names.length) {
      box.append(el("p", { className: "empty", text: "nothing in this window" }));
      charts[id] = null;
      return;
    }
    const opts = {
      width, height: 200,
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [{ stroke: "#64748b", grid: { stroke: "#eef2f7" } },
             { stroke: "#64748b", grid: { stroke: "#eef2f7" }, size: 60,
               values: (u, ticks) => ticks.map(format) }],
      series: [{}, ...names.map((name, i) => ({
        label: name, stroke: color(i), width: 2, spanGaps: false,
        value: (u, v) => (v === null || v === undefined ? "–" : format(v)),
        points: { show: false },
      }))],
    };
    charts[id] = { key, width, plot: new uPlot(opts, data, box) };
  }

  async function refresh() {
    const { status, body } = await getJSON("/api/queues?window=" + windowName);
    if (status !== 200) {
      setStatus(body.error || "error " + status, true);
      return;
    }
    renderTable(body.queues);
    const s = body.series;
    chart("chart-done", s.times, s.done_per_second, (v) => rate(v));
    chart("chart-failures", s.times, s.failures, (v) => String(Math.round(v)));
    chart("chart-p95", s.times, s.duration_p95, (v) => seconds(v));
    const loading = body.loaded ? "" : " · loading history…";
    setStatus("updated " + clock(body.now) + " UTC · newest event " + clock(body.newest_event)
              + loading);
    document.body.dataset.loaded = String(body.loaded);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const poller = omniq.poll(refresh, 2000);
    omniq.setupWindows(windowName, (value) => { windowName = value; poller.now(); });
  });
})();
