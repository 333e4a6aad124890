// Shared helpers of the web view. Stored text is data: it only ever goes into
// textContent or attribute values, never into markup.
"use strict";

const omniq = (() => {
  const PALETTE = ["#2563eb", "#16a34a", "#dc2626", "#d97706", "#7c3aed", "#0891b2",
                   "#db2777", "#65a30d", "#475569", "#ea580c"];

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "className") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    if (value === 0) return "0 s";
    if (value < 0.001) return (value * 1e6).toFixed(0) + " µs";
    if (value < 1) return (value * 1000).toFixed(1) + " ms";
    if (value < 60) return value.toFixed(2) + " s";
    if (value < 3600) {
      return Math.floor(value / 60) + "m " + String(Math.floor(value % 60)).padStart(2, "0") + "s";
    }
    return Math.floor(value / 3600) + "h " + String(Math.floor((value % 3600) / 60)).padStart(2, "0") + "m";
  }

  function rate(value) {
    if (value === 0) return "0";
    if (value < 0.1) return value.toFixed(3);
    return value < 100 ? value.toFixed(2) : value.toFixed(0);
  }

  function ratio(value) {
    return value === null || value === undefined ? "–" : (value * 100).toFixed(1) + " %";
  }

  function taskHref(taskId) {
    return "/tasks/" + encodeURIComponent(taskId);
  }

  function taskLink(taskId, full) {
    return el("a", { href: taskHref(taskId), className: "mono", title: taskId,
                     text: full ? taskId : taskId.slice(0, 8) });
  }

  function color(index) {
    return PALETTE[index % PALETTE.length];
  }

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" },
                                        credentials: "same-origin", cache: "no-store" });
    const body = await response.json();
    return { status: response.status, body };
  }

  function setStatus(text, isError) {
    const status = document.getElementById("status");
    if (!status) return;
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  function clock(iso, millis) {
    if (!iso) return "–";
    const text = iso.replace("T", " ").replace("Z", "");
    const dot = text.indexOf(".");
    if (dot < 0) return text;
    return millis ? text.slice(0, dot + 4) : text.slice(0, dot);
  }

  function windowFromUrl() {
    const value = new URLSearchParams(location.search).get("window");
    return ["5m", "1h", "24h"].includes(value) ? value : "1h";
  }

  function setupWindows(current, onChange) {
    const box = document.getElementById("windows");
    box.replaceChildren(...[["5m", "5 min"], ["1h", "1 h"], ["24h", "24 h"]].map(([value, label]) =>
      el("button", { type: "button", "data-window": value, text: label })));
    const buttons = box.querySelectorAll("button");
    const mark = (value) => buttons.forEach((b) => b.classList.toggle("active", b.dataset.window === value));
    mark(current);
    buttons.forEach((button) => button.addEventListener("click", () => {
      const params = new URLSearchParams(location.search);
      params.set("window", button.dataset.window);
      history.replaceState(null, "", location.pathname + "?" + params.toString());
      mark(button.dataset.window);
      onChange(button.dataset.window);
    }));
  }

  function poll(step, interval) {
    let timer = null;
    const run = async () => {
      try {
        await step();
      } catch (error) {
        setStatus("update failed: " + error, true);
      }
      timer = setTimeout(run, interval);
    };
    run();
    return { now: () => { clearTimeout(timer); run(); } };
  }

  function setupNav() {
    const page = document.body.dataset.page;
    const link = document.getElementById("nav-" + page);
    if (link) link.classList.add("active");
    const form = document.getElementById("search");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = document.getElementById("search-input").value.trim();
      if (value) location.assign(taskHref(value));
    });
  }

  document.addEventListener("DOMContentLoaded", setupNav);
  return { el, seconds, rate, ratio, taskHref, taskLink, color, getJSON, setStatus, clock,
           windowFromUrl, setupWindows, poll };
})();
