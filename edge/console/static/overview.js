// The line overview: one row per station seen on the broker, redrawn on every `stations` event.
"use strict";

(() => {
  const { el, number, percent, count, ago, stationUrl, showHealth, listen, getJson } = edgeConsole;
  const body = document.getElementById("stations");

  function row(station) {
    const alarms = station.alarms || [];
    const status = el("span", { class: "badge " + station.status, "data-testid": "station-status" }, station.status);
    const latency = number(station.latency_p50_ms, 1) + " / " + number(station.latency_p99_ms, 1) + " ms";
    const dropped = el("span", { title: "not inspected: " + count(station.not_inspected) }, count(station.dropped_frames));
    const outbox = el("span", { class: station.outbox_pending > 0 ? "warn" : "" }, count(station.outbox_pending));
    const drift = el("span", { class: Math.abs(station.drift) >= 1 ? "warn" : "" }, number(station.drift, 2));
    const alarmCell = alarms.length
      ? el("span", { class: "bad", title: alarms.map((a) => a.alarm + ": " + a.message).join("\n") }, alarms.map((a) => a.alarm).join(", "))
      : el("span", { class: "ok" }, "none");
    const cells = [
      el("a", { href: stationUrl(station.name), "data-testid": "station-link" }, station.name),
      status,
      el("span", { "data-testid": "recipe-bundle" }, (station.recipe ? station.recipe + " · " : "") + (station.bundle_id || "–")),
      el("span", { "data-testid": "station-fps" }, number(station.fps, 1)),
      el("span", { "data-testid": "station-reject-rate" }, percent(station.reject_rate)),
      latency,
      dropped,
      outbox,
      drift,
      alarmCell,
      ago(station.last_seen),
    ];
    return el(
      "tr",
      { "data-testid": "station-row", "data-station": station.name, class: alarms.length ? "alarm" : "" },
      ...cells.map((cell) => el("td", {}, cell))
    );
  }

  function render(data) {
    showHealth(data.console);
    const stations = data.stations || [];
    if (!stations.length) {
      body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 11 }, "No station has published yet.")));
      return;
    }
    body.replaceChildren(...stations.map(row));
  }

  getJson("/api/stations").then(render, () => {});
  listen("/api/events", { stations: render });
})();
