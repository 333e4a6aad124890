// The failures page: the latest FAILED and TIMEOUT events, newest first.
"use strict";

(() => {
  const { el, getJSON, setStatus, clock, taskLink } = omniq;
  let windowName = omniq.windowFromUrl();
  const params = new URLSearchParams(location.search);
  const filters = { queue: params.get("queue") || "", error_type: params.get("error_type") || "" };

  function fillSelect(select, counts, selected) {
    const signature = JSON.stringify([counts, selected]);
    if (select.dataset.signature === signature) return;  // keep an open list open
    select.dataset.signature = signature;
    const options = [el("option", { value: "", text: "all" })];
    const names = Object.keys(counts).sort();
    if (selected && !names.includes(selected)) names.push(selected);
    for (const name of names) {
      const option = el("option", { value: name, text: name + " (" + (counts[name] || 0) + ")" });
      if (name === selected) option.selected = true;
      options.push(option);
    }
    select.replaceChildren(...options);
  }

  function item(failure) {
    const head = el("div", { className: "failure-head" },
      el("span", { className: "badge " + failure.event_type.toLowerCase(), text: failure.event_type }),
      el("span", { className: "error-type", text: failure.error_type }),
      el("span", { className: "muted", text: "queue " }),
      el("span", { className: "queue", text: failure.queue }),
      el("span", { className: "muted when", text: clock(failure.timestamp, true) + " UTC" }),
      el("span", { className: "spacer" }),
      el("span", { className: "muted", text: "task " }),
      taskLink(failure.task_id, true));
    const body = [head];
    if (failure.error !== null) body.push(el("div", { className: "error", text: failure.error }));
    if (failure.traceback !== null) body.push(el("pre", { className: "traceback", text: failure.traceback }));
    return el("li", { className: "failure", "data-event-id": failure.event_id }, ...body);
  }

  async function refresh() {
    const query = new URLSearchParams({ window: windowName, limit: "100" });
    if (filters.queue) query.set("queue", filters.queue);
    if (filters.error_type) query.set("error_type", filters.error_type);
    const { status, body } = await getJSON("/api/failures?" + query.toString());
    if (status !== 200) {
      setStatus(body.error || "error " + status, true);
      return;
    }
    const counts = body.counts;
    fillSelect(document.getElementById("filter-queue"), counts.by_queue, filters.queue);
    fillSelect(document.getElementById("filter-error"), counts.by_error_type, filters.error_type);
    const summary = document.getElementById("summary");
    summary.replaceChildren(
      el("strong", { id: "failure-total", text: String(counts.total), "data-value": counts.total }),
      " failed attempts (FAILED + TIMEOUT) in this window",
      body.failures.length ? " · showing the latest " + body.failures.length
        + (filters.queue || filters.error_type ? " matching the filters" : "") : "");
    const list = document.getElementById("failures");
    const signature = JSON.stringify(body.failures);
    if (list.dataset.signature !== signature) {
      list.dataset.signature = signature;
      const items = body.failures.map(item);
      if (!items.length) items.push(el("li", { className: "empty", text: "no failures" }));
      list.replaceChildren(...items);
    }
    setStatus("updated " + clock(new Date().toISOString()) + " UTC"
              + (body.loaded ? "" : " · loading history…"));
    document.body.dataset.loaded = String(body.loaded);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const poller = omniq.poll(refresh, 2000);
    omniq.setupWindows(windowName, (value) => { windowName = value; poller.now(); });
    for (const [id, key] of [["filter-queue", "queue"], ["filter-error", "error_type"]]) {
      document.getElementById(id).addEventListener("change", (event) => {
        filters[key] = event.target.value;
        const next = new URLSearchParams(location.search);
        if (filters[key]) next.set(key, filters[key]); else next.delete(key);
        history.replaceState(null, "", location.pathname + "?" + next.toString());
        poller.now();
      });
    }
  });
})();
