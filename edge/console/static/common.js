// Shared by the pages: DOM building (text only, never innerHTML), number formats, the health
// line, the event stream, and the operator's session: who is logged in, the CSRF token every
// write sends, and the label buttons of a part. Plain ES2017, no framework, nothing from
// another origin.
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
    return answer(await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } }));
  }

  // A JSON answer, or an Error with the server's own message (FastAPI's `detail`) and status.
  async function answer(response) {
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

  // -- the operator's session ---------------------------------------------------------------------
  let sessionPromise = null;

  // {write_enabled, user, csrf, read_only}: fetched once per page.
  function session() {
    if (!sessionPromise) {
      sessionPromise = getJson("/api/session").catch(() => ({ write_enabled: false, user: null, csrf: null, read_only: "the console did not answer" }));
    }
    return sessionPromise;
  }

  // A write: JSON body, the session's CSRF token in its header. Resolves only when the console
  // says the broker confirmed it; otherwise throws with the console's reason.
  async function postJson(url, body) {
    const current = await session();
    const response = await fetch(url, {
      method: "POST",
      cache: "no-store",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": current.csrf || "" },
      body: JSON.stringify(body),
    });
    return answer(response);
  }

  // The header's login state: read-only, a "Log in" link, or the operator with "Log out".
  function showUser(current) {
    const target = document.getElementById("user");
    if (!target) return;
    if (!current.write_enabled) {
      target.replaceChildren(el("span", { class: "read-only", title: current.read_only || "" }, "read-only"));
    } else if (!current.user) {
      const back = location.pathname === "/login" ? "/" : location.pathname + location.search;
      target.replaceChildren(el("a", { href: "/login?next=" + encodeURIComponent(back), "data-testid": "login-link" }, "Log in"));
    } else {
      const out = el("button", { type: "button", class: "link", "data-testid": "logout" }, "Log out");
      out.addEventListener("click", async () => {
        out.disabled = true;
        try {
          await postJson("/logout", {});
        } catch (error) {
          // Reloading shows what the console thinks either way.
        }
        location.reload();
      });
      target.replaceChildren(el("span", { "data-testid": "operator" }, current.user), " ", out);
    }
  }

  function labelText(label) {
    if (!label) return "not labelled";
    const type = label.label === "defect" && label.defect_type ? " (" + label.defect_type + ")" : "";
    return "labelled " + label.label + type + (label.by ? " by " + label.by : "");
  }

  // A part's label, and for a logged-in operator the buttons that send one: "Good", or "Defect"
  // with an optional type. onLabelled(label) runs once the broker confirmed it.
  function labelControls(station, part, current, onLabelled) {
    const state = el("span", { class: "label-state" + (part.label ? " " + part.label.label : ""), "data-testid": "label-state" }, labelText(part.label));
    const box = el("div", { class: "label-controls", "data-testid": "label-controls" }, state);
    if (!current.user) return box;
    box.setAttribute("role", "group");
    box.setAttribute("aria-label", "label part " + part.part_id);
    const result = el("span", { class: "caption", role: "status", "aria-live": "polite", "data-testid": "label-result" });
    const good = el("button", { type: "button", class: "good", "data-testid": "label-good", "aria-label": "Good: label part " + part.part_id + " good" }, "Good");
    const type = el("input", { type: "text", maxlength: 40, size: 10, placeholder: "unspecified", autocomplete: "off", "data-testid": "defect-type", "aria-label": "Defect type of part " + part.part_id });
    const defect = el("button", { type: "button", class: "defect", "data-testid": "label-defect", "aria-label": "Defect: label part " + part.part_id + " defective" }, "Defect");

    async function send(body) {
      good.disabled = defect.disabled = true;
      result.className = "caption";
      result.textContent = "sending…";
      try {
        const sent = await postJson("/api/stations/" + encodeURIComponent(station) + "/feedback", body);
        state.textContent = labelText(sent.label);
        state.className = "label-state " + sent.label.label;
        result.textContent = "sent";
        if (onLabelled) onLabelled(sent.label);
      } catch (error) {
        result.className = "caption bad";
        result.textContent = "not sent: " + error.message;
      } finally {
        good.disabled = defect.disabled = false;
      }
    }

    good.addEventListener("click", () => send({ part_id: part.part_id, label: "good" }));
    defect.addEventListener("click", () => {
      const body = { part_id: part.part_id, label: "defect" };
      if (type.value.trim()) body.defect_type = type.value.trim();
      send(body);
    });
    box.append(" ", good, " ", el("label", { class: "defect-type" }, "Defect type ", type), " ", defect, " ", result);
    return box;
  }

  // Runs a write from a page's form: the button disabled while it runs, the outcome in `result`.
  async function act(result, button, call) {
    if (button) button.disabled = true;
    result.className = "caption";
    result.textContent = "sending…";
    try {
      const sent = await call();
      result.textContent = sent.message || "sent";
      return sent;
    } catch (error) {
      result.className = "caption bad";
      result.textContent = "not sent: " + error.message;
      return null;
    } finally {
      if (button) button.disabled = false;
    }
  }

  session().then(showUser);

  return { el, svg, number, percent, count, localTime, ago, stationUrl, showHealth, listen, getJson, postJson, session, labelText, labelControls, act, DASH };
})();
