// Shared by the three pages: DOM building (text only, never innerHTML), number formats, the
// health line and the event stream. Plain ES2017, no framework, nothing from another origin.
"use strict";

const edgeConsole = (() => {
  const SVG_NS = "http://www.w3.org/2000/svg";

  // An element with attributes and children; strings become text nodes, so whatever a station
  // published is shown as text and can never become markup.
  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    setAttributes(node, attributes);
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attributes, text) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttributes(node, attributes);
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function setAttributes(node, attributes) {
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value !== null && value !== undefined && value !== false) node.setAttribute(name, String(value));
    }
  }

  const DASH = "–";

  function number(value, digits) {
    return typeof value === "number" && isFinite(value) ? value.toFixed(digits) : DASH;
  }

  function percent(value) {
    return typeof value === "number" && isFinite(value) ? (100 * value).toFixed(value < 0.1 ? 2 : 1) + " %" : DASH;
  }

  function count(value) {
    return typeof value === "number" ? String(value) : DASH;
  }

  function localTime(iso) {
    if (!iso) return DASH;
    const t = new Date(iso);
    return isNaN(t) ? DASH : t.toLocaleString();
  }

  function ago(iso) {
    if (!iso) return DASH;
    const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
    if (!isFinite(seconds)) return DASH;
    if (seconds < 2) return "now";
    if (seconds < 120) return Math.round(seconds) + " s ago";
    if (seconds < 7200) return Math.round(seconds / 60) + " min ago";
    return Math.round(seconds / 3600) + " h ago";
  }

  function stationUrl(name) {
    return "/station/" + encodeURIComponent(name);
  }

  // The header's line: broker connection and history state, with the reason when degraded.
  function showHealth(health) {
    const target = document.getElementById("health");
    if (!target || !health) return;
    const broker = health.broker_connected
      ? el("span", { class: "ok" }, "broker " + health.broker)
      : el("span", { class: "bad", title: health.broker_error || "" }, "broker " + health.broker + " not connected");
    const history = health.history_ok
      ? el("span", { class: "ok" }, "history ok")
      : el("span", { class: "bad", title: health.history_error || "" }, "history degraded: " + (health.history_error || "unknown"));
    target.replaceChildren(broker, " · ", history);
  }

  function showStreamLost() {
    const target = document.getElementById("health");
    if (target) target.replaceChildren(el("span", { class: "bad" }, "console not reachable; retrying"));
  }

  // The server-sent event stream; EventSource reconnects by itself (the server asks for 3 s).
  function listen(url, handlers) {
    const source = new EventSource(url);
    for (const [name, handler] of Object.entries(handlers)) {
      source.addEventListener(name, (event) => {
        let data;
        try {
          data = JSON.parse(event.data);
        } catch (error) {
          return;
        }
        handler(data);
      });
    }
    source.addEventListener("error", showStreamLost);
    return source;
  }

  async function getJson(url) {
    const response = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    if (!response.ok) {
      const detail = body && typeof body.detail === "string" ? body.detail : response.status + " " + response.statusText;
      const failure = new Error(detail);
      failure.status = response.status;
      throw failure;
    }
    return body;
  }

  return { el, svg, number, percent, count, localTime, ago, stationUrl, showHealth, listen, getJson, DASH };
})();
