// One task: attempts and queue waits on a timeline, then every event with its details.
"use strict";

(() => {
  const { el, seconds, getJSON, setStatus, clock, taskHref } = omniq;
  const SVG = "http://www.w3.org/2000/svg";
  const STATUS_CLASS = { completed: "ok", failed: "bad", timeout: "warn", cancelled: "muted",
                         retried: "warn", running: "run", no_start: "muted" };

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function taskKey() {
    return decodeURIComponent(location.pathname.slice("/tasks/".length));
  }

  function timeline(doc) {
    const lanes = [];
    for (const wait of doc.queue_waits) {
      lanes.push({ label: "queue wait", start: wait.start, end: wait.end, seconds: wait.seconds, cls: "wait" });
    }
    for (const attempt of doc.attempts) {
      lanes.push({ label: "attempt " + attempt.attempt + (attempt.worker_id ? " · " + attempt.worker_id : ""),
                   start: attempt.start, end: attempt.end, seconds: attempt.duration_seconds,
                   cls: STATUS_CLASS[attempt.status] || "muted", status: attempt.status });
    }
    lanes.sort((a, b) => Date.parse(a.start) - Date.parse(b.start));
    const stamps = doc.events.map((e) => Date.parse(e.timestamp));
    let t0 = Math.min(...stamps);
    let t1 = Math.max(...stamps, ...lanes.map((l) => (l.end ? Date.parse(l.end) : Date.parse(l.start) + l.seconds * 1000)));
    if (t1 - t0 < 1) t1 = t0 + 1;
    const width = 1000, labelWidth = 190, right = 150, rowHeight = 26, top = 34;
    const height = top + Math.max(1, lanes.length) * rowHeight + 10;
    const x = (t) => labelWidth + ((t - t0) / (t1 - t0)) * (width - labelWidth - right);
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img",
                              "aria-label": "task timeline" });
    root.append(svg("line", { x1: labelWidth, x2: width - right, y1: top - 8, y2: top - 8, class: "axis" }));
    doc.events.forEach((event, i) => {
      const px = x(stamps[i]);
      root.append(svg("line", { x1: px, x2: px, y1: top - 14, y2: height - 6, class: "tick" }));
      const mark = svg("circle", { cx: px, cy: top - 8, r: 4, class: "mark " + event.event_type.toLowerCase() });
      mark.append(svg("title", {}, event.event_type + " " + clock(event.timestamp, true)));
      root.append(mark);
    });
    root.append(svg("text", { x: labelWidth, y: 12, class: "axis-label" }, clock(new Date(t0).toISOString())));
    root.append(svg("text", { x: width - right, y: 12, class: "axis-label end" },
                    "+" + seconds((t1 - t0) / 1000)));
    lanes.forEach((lane, i) => {
      const y = top + i * rowHeight;
      const start = Date.parse(lane.start);
      const end = lane.end ? Date.parse(lane.end) : start + lane.seconds * 1000;
      const bx = x(start), bw = Math.max(2, x(end) - bx);
      root.append(svg("text", { x: 6, y: y + 16, class: "lane-label" }, lane.label));
      const bar = svg("rect", { x: bx, y: y + 4, width: bw, height: rowHeight - 10, rx: 3,
                                class: "bar " + lane.cls });
      bar.append(svg("title", {}, lane.label + ": " + seconds(lane.seconds) + (lane.status ? " (" + lane.status + ")" : "")));
      root.append(bar);
      root.append(svg("text", { x: bx + bw + 6, y: y + 16, class: "bar-label" },
                      seconds(lane.seconds) + (lane.status ? " " + lane.status : "")));
    });
    return root;
  }

  function details(value) {
    const keys = Object.keys(value);
    if (!keys.length) return el("span", { className: "muted", text: "(no details)" });
    const list = el("dl", { className: "kv" });
    for (const key of keys) {
      const item = value[key];
      const text = typeof item === "string" ? item : JSON.stringify(item, null, 2);
      const multi = text.includes("\n");
      list.append(el("dt", { text: key }),
                  el("dd", { className: multi ? "multi" : null, "data-key": key }, text));
    }
    return list;
  }

  function fact(term, ...values) {
    return [el("dt", { text: term }), el("dd", {}, ...values)];
  }

  function traceLinks(doc) {
    if (!doc.trace_ids.length) return ["–"];
    return doc.trace_ids.map((id) => {
      const url = doc.trace_links[id];
      if (url && /^https?:\/\//.test(url)) {
        return el("a", { href: url, className: "mono trace", rel: "noopener noreferrer", text: id });
      }
      return el("span", { className: "mono trace", text: id });
    });
  }

  function show(doc) {
    document.title = "Task " + doc.task_id.slice(0, 8) + " · omniq-observe";
    document.getElementById("title").replaceChildren("Task ", el("span", { className: "mono", id: "task-id", text: doc.task_id }));
    if (taskKey() !== doc.task_id) history.replaceState(null, "", taskHref(doc.task_id));
    const last = doc.events[doc.events.length - 1];
    document.getElementById("facts").replaceChildren(
      ...fact("queue", el("span", { id: "task-queue", text: doc.queue })),
      ...fact("state", el("span", { id: "task-state", text: last.event_type })),
      ...fact("attempts", el("span", { id: "task-attempts", text: String(doc.attempts.length) })),
      ...fact("events", el("span", { id: "task-events", text: String(doc.events.length) })),
      ...fact("trace", ...traceLinks(doc)));
    document.getElementById("timeline").replaceChildren(timeline(doc));
    const rows = doc.events.map((event) => el("tr", { "data-event-id": event.event_id },
      el("td", { className: "text mono nowrap", text: clock(event.timestamp, true) }),
      el("td", { className: "text" }, el("span", { className: "badge " + event.event_type.toLowerCase(), text: event.event_type })),
      el("td", { className: "text" }, details(event.details))));
    document.querySelector("#events tbody").replaceChildren(...rows);
    document.getElementById("timeline-box").hidden = false;
    document.getElementById("events-box").hidden = false;
  }

  function message(...children) {
    const box = document.getElementById("message");
    box.replaceChildren(...children);
    box.hidden = false;
  }

  async function load() {
    const key = taskKey();
    document.getElementById("search-input").value = key;
    if (!key) {
      document.getElementById("title").textContent = "Find a task";
      message("Type a task id, or a unique prefix of one (top shows 8 characters), in the search box.");
      setStatus("");
      return;
    }
    const { status, body } = await getJSON("/api/tasks/" + encodeURIComponent(key));
    if (status === 200) {
      show(body);
      setStatus("");
    } else if (status === 300) {
      document.getElementById("title").textContent = "Several tasks match";
      const list = el("ul", { className: "candidates" },
        ...body.candidates.map((id) => el("li", {}, omniq.taskLink(id, true))));
      message(el("p", { text: body.error }), list);
      setStatus("");
    } else {
      document.getElementById("title").textContent = "Task not found";
      message(el("p", { text: body.error || "error " + status }));
      setStatus("");
    }
    document.body.dataset.loaded = "true";
  }

  document.addEventListener("DOMContentLoaded", () => {
    load().catch((error) => setStatus("failed: " + error, true));
  });
})();
