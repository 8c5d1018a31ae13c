// The reject gallery: search by part id, station and time range (the page's own query string),
// newest first, each reject with its heatmap, regions, cause, score and threshold, its operator
// label, and for a logged-in operator the buttons that label it good or defective.
"use strict";

(() => {
  const { el, number, localTime, stationUrl, showHealth, getJson, session, labelControls } = edgeConsole;
  const PAGE = 60;
  const EAGER_IMAGES = 12; // the first screenful loads at once, the rest as they scroll in
  const gallery = document.getElementById("gallery");
  const status = document.getElementById("gallery-status");
  const older = document.getElementById("older");
  const params = new URLSearchParams(location.search);
  let shown = 0;
  let current = { write_enabled: false, user: null, csrf: null };

  // The form's datetime-local fields are in the browser's time zone; the API takes UTC.
  function utc(field) {
    const value = params.get(field);
    if (!value) return null;
    const t = new Date(value);
    if (isNaN(t)) throw new Error(field + ": not a date and time: " + value);
    return t.toISOString();
  }

  function query(until) {
    const q = new URLSearchParams({ limit: String(PAGE) });
    for (const field of ["part_id", "station"]) if (params.get(field)) q.set(field, params.get(field));
    const since = utc("since");
    if (since) q.set("since", since);
    const end = until || utc("until");
    if (end) q.set("until", end);
    return "/api/rejects?" + q.toString();
  }

  function region(r) {
    const [x, y, w, h] = r.bbox;
    return el("li", {}, "at " + x + "," + y + " size " + w + "×" + h + ", area " + r.area + " px, peak " + number(r.peak, 3));
  }

  function item(reject) {
    const picture = reject.heatmap
      ? el("img", { src: reject.heatmap, alt: "heatmap of part " + reject.part_id, "data-testid": "gallery-heatmap", loading: shown >= EAGER_IMAGES ? "lazy" : null })
      : el("div", { class: "no-image" }, "no heatmap received");
    shown++;
    const regions = reject.regions || [];
    return el(
      "figure",
      { class: "reject", "data-testid": "gallery-item", "data-part-id": reject.part_id, "data-station": reject.station },
      picture,
      el(
        "figcaption",
        {},
        el("div", { class: "title" }, el("strong", {}, reject.part_id), " · ", el("a", { href: stationUrl(reject.station) }, reject.station), reject.late ? el("span", { class: "badge late", title: "delivered after a broker outage" }, "late") : null),
        el("div", {}, localTime(reject.time)),
        el("div", {}, el("span", { class: "badge reject" }, reject.verdict), " " + (reject.cause || reject.error || "")),
        el("div", {}, "score " + (reject.score === null ? "none" : number(reject.score, 4)) + " / threshold " + number(reject.threshold, 4)),
        regions.length ? el("ul", { class: "regions" }, ...regions.map(region)) : el("div", { class: "muted" }, "no defect regions"),
        el("div", { class: "muted" }, "bundle " + (reject.bundle_id || "–") + (reject.recipe ? " · recipe " + reject.recipe : "")),
        labelControls(reject.station, reject, current)
      )
    );
  }

  async function load(until) {
    let data;
    try {
      data = await getJson(query(until));
    } catch (error) {
      status.textContent = error.message;
      status.className = "caption bad";
      return;
    }
    const rejects = data.rejects || [];
    gallery.append(...rejects.map(item));
    status.className = "caption";
    status.textContent = shown ? shown + " rejects shown, newest first" : "No rejects match.";
    older.hidden = rejects.length < PAGE;
    older.onclick = () => load(rejects[rejects.length - 1].time);
  }

  for (const field of ["part_id", "station", "since", "until"]) {
    const input = document.getElementById(field);
    if (input && params.get(field)) input.value = params.get(field);
  }
  getJson("/api/stations").then((data) => showHealth(data.console), () => {});
  session().then((answer) => {
    current = answer;
    load(null);
  });
})();
