// One station: live view, the last 50 parts, score over time against the threshold, and recent
// pass scores against the calibration's quantiles (drift at a glance). For a logged-in operator:
// the recipe selector, teach-in start and stop, and labels for the parts of the strip.
"use strict";

(() => {
  const { el, svg, number, percent, count, localTime, showHealth, listen, getJson, postJson, session, labelText, labelControls, act } = edgeConsole;
  const name = document.body.dataset.station;
  const encoded = encodeURIComponent(name);
  const KEEP = 1000; // parts kept for the chart, as many as the server keeps
  const STRIP = 50;

  let parts = []; // oldest first, each with the server's seq
  let lastSeq = 0;
  let previewSeq = 0;
  let shownPreview = null;
  let latest = null; // the last detail received
  let current = { write_enabled: false, user: null, csrf: null }; // the operator's session
  let labels = {}; // part id -> the label an operator sent (from the console, every event)
  let labelsKey = "{}";
  let selected = null; // the strip's part shown in the detail panel
  const base = "/api/stations/" + encoded;

  const $ = (id) => document.getElementById(id);

  function apply(detail) {
    latest = detail;
    const fresh = (detail.parts || []).filter((part) => part.seq > lastSeq);
    if (fresh.length) {
      parts = parts.concat(fresh).slice(-KEEP);
      lastSeq = parts[parts.length - 1].seq;
    }
    const key = JSON.stringify(detail.labels || {});
    const relabelled = key !== labelsKey;
    if (relabelled) {
      labels = Object.assign({}, detail.labels || {});
      labelsKey = key;
    }
    showHeader(detail);
    showPreview(detail.preview);
    showStats(detail.stats);
    showControls(detail);
    if (fresh.length || relabelled || !$("chart").hasChildNodes()) {
      showStrip();
      drawChart();
    }
    if (relabelled) showDetail(false);
    drawHistogram(detail.stats);
  }

  // -- recipe, teach-in and the station's label counts ----------------------------------------
  let recipesKey = null;
  let recipeChosen = false; // the operator picked one: the stream does not undo their choice

  function showControls(detail) {
    const stats = detail.stats || {};
    const active = stats.recipe || detail.recipe || null;
    $("recipe").textContent = active || "–";
    const recipes = Array.isArray(stats.recipes) ? stats.recipes : [];
    const key = JSON.stringify([recipes, active]);
    const select = $("recipe-select");
    if (key !== recipesKey) {
      recipesKey = key;
      const chosen = recipeChosen ? select.value : active;
      select.replaceChildren(...recipes.map((recipe) => el("option", { value: recipe }, recipe + (recipe === active ? " (active)" : ""))));
      if (recipes.includes(chosen)) select.value = chosen;
    }
    $("recipe-form").hidden = !(current.user && recipes.length);
    const teach = stats.teach || null;
    const state = $("teach-state");
    state.textContent = teachText(teach);
    state.dataset.active = teach && teach.active ? "true" : "false";
    state.dataset.saved = teach ? String(teach.saved) : "";
    $("teach-form").hidden = !current.user;
    showLabelCounts(stats.labels);
  }

  function teachText(teach) {
    if (!teach) return "No teach-in running.";
    const of = typeof teach.count === "number" ? " of " + teach.count : "";
    const folder = teach.folder || "?";
    return teach.active
      ? "Collecting good parts into " + folder + ": " + teach.saved + of + " saved."
      : "Not running. The last one saved " + teach.saved + of + " parts in " + folder + ".";
  }

  const LABEL_ROWS = [
    ["false_rejects", "false rejects (rejected, labelled good)"],
    ["misses", "misses (passed, labelled defect)"],
    ["confirmed_rejects", "confirmed rejects"],
    ["confirmed_good", "confirmed good"],
  ];

  function showLabelCounts(counts) {
    if (!counts) {
      $("label-counts").replaceChildren(el("dt", {}, "labels"), el("dd", {}, "none reported by the station"));
      return;
    }
    const items = [];
    for (const [key, label] of LABEL_ROWS) items.push(el("dt", {}, label), el("dd", { "data-key": key }, count(counts[key])));
    $("label-counts").replaceChildren(...items);
  }

  $("recipe-select").addEventListener("change", () => {
    recipeChosen = true;
  });

  $("recipe-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const recipe = $("recipe-select").value;
    const sent = await act($("recipe-result"), event.submitter, () => postJson(base + "/recipe", { recipe }));
    if (sent) recipeChosen = false;
  });

  $("teach-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { action: "start" };
    const folder = $("teach-name").value.trim();
    if (folder) body.name = folder;
    const wanted = $("teach-count").value.trim();
    if (wanted) body.count = /^[0-9]+$/.test(wanted) ? Number(wanted) : wanted; // the console says what is wrong
    await act($("teach-result"), event.submitter, () => postJson(base + "/teach", body));
  });

  $("teach-stop").addEventListener("click", (event) => act($("teach-result"), event.currentTarget, () => postJson(base + "/teach", { action: "stop" })));

  function showHeader(detail) {
    const status = $("status");
    status.textContent = detail.status;
    status.className = "badge " + detail.status;
    $("summary").replaceChildren(
      "bundle " + (detail.bundle_id || "–"),
      " · " + number(detail.fps, 1) + " parts/s",
      " · reject rate " + percent(detail.reject_rate),
      " · latency p50 " + number(detail.latency_p50_ms, 1) + " / p99 " + number(detail.latency_p99_ms, 1) + " ms",
      " · camera " + (detail.camera || "–")
    );
    const alarms = detail.alarms || [];
    $("alarms").replaceChildren(
      ...alarms.map((alarm) =>
        el("li", { class: "bad", "data-testid": "alarm" }, el("strong", {}, alarm.alarm), ": " + alarm.message, el("span", { class: "since" }, " since " + localTime(alarm.since)))
      )
    );
  }

  function showPreview(preview) {
    if (!preview || preview.seq === previewSeq) return;
    previewSeq = preview.seq;
    // A new URL per preview: the browser fetches the new image and never shows a cached one.
    $("preview").src = "/api/preview/" + encoded + ".jpg?seq=" + preview.seq;
    $("preview").hidden = false;
    $("preview").dataset.seq = String(preview.seq);
    shownPreview = preview;
    captionPreview();
  }

  // The live view is throttled (a few pictures a second) while the verdict above follows every
  // part, so the picture is often of a part a few before: the caption says so, lest a red
  // heatmap beside a green PASS be read as the same part.
  function captionPreview() {
    const preview = shownPreview;
    if (!preview) return;
    const said = preview.part_id
      ? "part " + preview.part_id + " · " + (preview.verdict || "?") + " · score " + number(preview.score, 3)
      : "unattributed frame";
    const last = parts[parts.length - 1];
    const earlier = last && preview.part_id && last.part_id !== preview.part_id;
    const caption = $("preview-caption");
    caption.textContent = (earlier ? "picture of an earlier part: " : "") + said + " · " + localTime(preview.received);
    caption.dataset.earlier = earlier ? "yes" : "no";
  }

  const STAT_ROWS = [
    ["parts", "parts inspected", count],
    ["rejects", "rejects", count],
    ["uninspected", "rejected without inspection", count],
    ["dropped_frames", "dropped frames", count],
    ["not_inspected", "not inspected", count],
    ["bad_frames", "bad frames", count],
    ["inference_errors", "inference errors", count],
    ["trigger_timeouts", "trigger timeouts", count],
    ["outbox_pending", "outbox backlog", count],
    ["results_dropped", "results dropped", count],
    ["rejects_not_saved", "rejects not saved", count],
    ["audit_write_errors", "audit write errors", count],
    ["disk_full", "disk full", (v) => (v === null || v === undefined ? "–" : v ? "yes" : "no")],
    ["broker_error", "broker error", (v) => v || "none"],
    ["uptime_s", "uptime", (v) => (typeof v === "number" ? (v / 3600).toFixed(1) + " h" : "–")],
  ];

  function showStats(stats) {
    if (!stats) {
      $("stats").replaceChildren(el("dt", {}, "stats"), el("dd", {}, "none received yet"));
      return;
    }
    const items = [];
    for (const [key, label, format] of STAT_ROWS) {
      items.push(el("dt", {}, label), el("dd", { "data-key": key }, format(stats[key])));
    }
    $("stats").replaceChildren(...items);
  }

  function partTitle(part) {
    const score = part.score === null ? "no score" : "score " + number(part.score, 4);
    const threshold = part.threshold === null ? "" : " / threshold " + number(part.threshold, 4);
    return "part " + part.part_id + " · " + part.verdict + " · " + score + threshold + (part.cause ? " · " + part.cause : "") + " · " + localTime(part.time);
  }

  // The last part's verdict, big enough to read from across the line.
  function showVerdict() {
    const last = parts[parts.length - 1];
    if (!last) return;
    const verdict = $("verdict");
    verdict.textContent = (last.verdict || "?").toUpperCase().replace("_", " ") + " · part " + last.part_id;
    verdict.className = "verdict " + (last.verdict === "pass" ? "pass" : "reject");
    verdict.dataset.verdict = last.verdict || "";
    verdict.dataset.partId = last.part_id;
    captionPreview();
  }

  // The strip: one button per part (arrow keys move along it); picking one shows it below with
  // its label buttons. A redraw keeps the keyboard focus on the part it was on.
  function showStrip() {
    showVerdict();
    const recent = parts.slice(-STRIP);
    const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest("#strip") ? document.activeElement.dataset.seq : null;
    const tabbable = selected && recent.some((part) => part.seq === selected.seq) ? selected.seq : recent.length ? recent[recent.length - 1].seq : null;
    const cells = recent.map((part) => {
      const label = labels[part.part_id];
      const cell = el("button", {
        type: "button",
        class: "cell " + (part.verdict === "pass" ? "pass" : "reject") + (label ? " labelled" : ""),
        title: partTitle(part) + (label ? " · " + labelText(label) : ""),
        "aria-label": partTitle(part) + (label ? " · " + labelText(label) : ""),
        "aria-pressed": selected && selected.seq === part.seq ? "true" : "false",
        tabindex: part.seq === tabbable ? "0" : "-1",
        "data-testid": "strip-item",
        "data-seq": part.seq,
        "data-part-id": part.part_id,
        "data-verdict": part.verdict,
        "data-score": part.score === null ? "" : part.score,
        "data-label": label ? label.label : "",
      });
      cell.addEventListener("click", () => select(part));
      cell.addEventListener("keydown", (event) => moveAlong(event, cell));
      return cell;
    });
    $("strip").replaceChildren(...cells);
    if (focused) {
      const again = cells.find((cell) => cell.dataset.seq === focused) || cells[cells.length - 1];
      if (again) again.focus();
    }
  }

  function moveAlong(event, cell) {
    const step = { ArrowLeft: -1, ArrowRight: 1, Home: -Infinity, End: Infinity }[event.key];
    if (step === undefined) return;
    event.preventDefault();
    const cells = Array.from($("strip").children);
    const here = cells.indexOf(cell);
    const next = cells[Math.max(0, Math.min(cells.length - 1, isFinite(step) ? here + step : step < 0 ? 0 : cells.length - 1))];
    if (!next) return;
    cell.tabIndex = -1;
    next.tabIndex = 0;
    next.focus();
  }

  function select(part) {
    selected = part;
    for (const cell of $("strip").children) cell.setAttribute("aria-pressed", cell.dataset.seq === String(part.seq) ? "true" : "false");
    showDetail(true);
  }

  // The picked part: what it is, its label, and for an operator the label buttons. Redrawn only
  // when the pick or its label changes, so a defect type being typed is not wiped by the stream.
  let detailKey = null;

  function showDetail(force) {
    const panel = $("part-detail");
    if (!selected) {
      panel.hidden = true;
      return;
    }
    const part = Object.assign({}, selected, { label: labels[selected.part_id] || null });
    const key = JSON.stringify([part.seq, part.label, current.user]);
    if (!force && key === detailKey) return;
    detailKey = key;
    panel.hidden = false;
    panel.dataset.partId = part.part_id;
    panel.replaceChildren(
      el("div", { class: "title" }, el("strong", {}, part.part_id), " · " + part.verdict + " · score " + number(part.score, 4) + " / threshold " + number(part.threshold, 4)),
      el("div", { class: "caption" }, localTime(part.time) + (part.recipe ? " · recipe " + part.recipe : "") + (part.cause ? " · " + part.cause : "")),
      labelControls(name, part, current, (label) => {
        labels[part.part_id] = label;
        detailKey = JSON.stringify([part.seq, label, current.user]);
        showStrip();
      })
    );
  }

  // -- score over time ---------------------------------------------------------------------------
  const W = 800, H = 240, LEFT = 56, RIGHT = 12, TOP = 12, BOTTOM = 28;

  function drawChart() {
    const chart = $("chart");
    const scored = parts.filter((part) => typeof part.score === "number");
    const thresholds = parts.filter((part) => typeof part.threshold === "number");
    if (!scored.length && !thresholds.length) {
      chart.replaceChildren(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted" }, "no scored parts yet"));
      return;
    }
    const times = parts.map((part) => Date.parse(part.time));
    const t0 = Math.min(...times), t1 = Math.max(...times);
    const span = t1 - t0 || 1;
    const top = Math.max(...scored.map((p) => p.score), ...thresholds.map((p) => p.threshold)) * 1.15 || 1;
    const bottom = Math.min(0, ...scored.map((p) => p.score));
    const x = (t) => LEFT + ((t - t0) / span) * (W - LEFT - RIGHT);
    const y = (v) => TOP + (1 - (v - bottom) / (top - bottom)) * (H - TOP - BOTTOM);
    const nodes = [axes(bottom, top, y, t0, t1)];

    // The threshold as a step line through the parts' own thresholds: a recalibration mid-window
    // shows as a step. data-threshold holds the newest part's threshold.
    if (thresholds.length) {
      let d = "M" + LEFT + " " + y(thresholds[0].threshold);
      let previous = thresholds[0].threshold;
      for (const part of thresholds) {
        if (part.threshold === previous) continue;
        d += " H" + x(Date.parse(part.time)) + " V" + y(part.threshold);
        previous = part.threshold;
      }
      d += " H" + (W - RIGHT);
      const current = thresholds[thresholds.length - 1].threshold;
      nodes.push(svg("path", { d, class: "threshold", "data-testid": "threshold-line", "data-threshold": current }));
      nodes.push(svg("text", { x: W - RIGHT - 4, y: y(current) - 4, "text-anchor": "end", class: "threshold-label" }, "threshold " + number(current, 4)));
    }
    for (const part of scored) {
      const dot = svg("circle", { cx: x(Date.parse(part.time)), cy: y(part.score), r: part.verdict === "pass" ? 2 : 3, class: part.verdict === "pass" ? "pass" : "reject" });
      dot.append(svg("title", {}, partTitle(part)));
      nodes.push(dot);
    }
    chart.replaceChildren(...nodes);
  }

  function axes(bottom, top, y, t0, t1) {
    const group = svg("g", { class: "axes" });
    group.append(svg("line", { x1: LEFT, y1: TOP, x2: LEFT, y2: H - BOTTOM }), svg("line", { x1: LEFT, y1: H - BOTTOM, x2: W - RIGHT, y2: H - BOTTOM }));
    for (let i = 0; i <= 4; i++) {
      const v = bottom + ((top - bottom) * i) / 4;
      group.append(svg("text", { x: LEFT - 6, y: y(v) + 4, "text-anchor": "end" }, v.toPrecision(3)));
    }
    group.append(svg("text", { x: LEFT, y: H - 8 }, new Date(t0).toLocaleTimeString()));
    group.append(svg("text", { x: W - RIGHT, y: H - 8, "text-anchor": "end" }, new Date(t1).toLocaleTimeString()));
    return group;
  }

  // -- recent pass scores against the calibration's quantiles -----------------------------------
  const BINS = 30;

  function drawHistogram(stats) {
    const histogram = $("histogram");
    const scores = parts.filter((p) => p.verdict === "pass" && typeof p.score === "number").map((p) => p.score);
    const quantiles = (stats && stats.calibration_quantiles) || {};
    const marks = Object.entries(quantiles).filter(([, v]) => typeof v === "number");
    const threshold = latest && typeof latest.threshold === "number" ? latest.threshold : null;
    showDrift(stats);
    if (!scores.length && !marks.length) {
      histogram.replaceChildren(svg("text", { x: 400, y: 100, "text-anchor": "middle", class: "muted" }, "no pass scores yet"));
      return;
    }
    const values = scores.concat(marks.map(([, v]) => v), threshold === null ? [] : [threshold]);
    const lo = Math.min(...values), hi = Math.max(...values);
    const width = (hi - lo) / BINS || 1;
    const counts = new Array(BINS).fill(0);
    for (const s of scores) counts[Math.min(BINS - 1, Math.floor((s - lo) / width))]++;
    const most = Math.max(1, ...counts);
    const HW = 800, HH = 200, L = 40, R = 12, T = 20, B = 24;
    const x = (v) => L + ((v - lo) / (width * BINS)) * (HW - L - R);
    const nodes = [svg("line", { x1: L, y1: HH - B, x2: HW - R, y2: HH - B, class: "axis" })];
    counts.forEach((n, i) => {
      const h = (n / most) * (HH - T - B);
      const bar = svg("rect", { x: x(lo + i * width) + 1, y: HH - B - h, width: Math.max(1, (HW - L - R) / BINS - 2), height: h, class: "bar" });
      bar.append(svg("title", {}, n + " parts between " + (lo + i * width).toPrecision(4) + " and " + (lo + (i + 1) * width).toPrecision(4)));
      nodes.push(bar);
    });
    marks.forEach(([key, value], i) => {
      nodes.push(svg("line", { x1: x(value), y1: T, x2: x(value), y2: HH - B, class: "quantile", "data-testid": "calibration-quantile", "data-quantile": key, "data-value": value }));
      nodes.push(svg("text", { x: x(value) + 2, y: T - 6 + (i % 2) * 10, class: "quantile-label" }, key));
    });
    if (threshold !== null) {
      nodes.push(svg("line", { x1: x(threshold), y1: T, x2: x(threshold), y2: HH - B, class: "threshold" }));
    }
    nodes.push(svg("text", { x: L, y: HH - 6 }, lo.toPrecision(3)), svg("text", { x: HW - R, y: HH - 6, "text-anchor": "end" }, hi.toPrecision(3)));
    histogram.replaceChildren(...nodes);
  }

  function showDrift(stats) {
    const drift = stats && stats.drift;
    $("drift").textContent = drift
      ? "Median pass score " + number(drift.recent_median, 4) + " against calibration " + number(drift.calibration_median, 4) +
        ": shifted by " + number(drift.median_shift_in_spreads, 2) + " spreads (q50..q95 of calibration)."
      : "Drift: not enough pass scores yet.";
  }

  function start() {
    session().then((answer) => {
      current = answer;
      if (latest) showControls(latest);
      showDetail(true);
    });
    getJson("/api/stations/" + encoded)
      .then(apply, (error) => {
        $("summary").textContent = error.status === 404 ? "Waiting for station " + name + " to publish." : "Cannot load: " + error.message;
      })
      .finally(() => {
        listen("/api/events?station=" + encoded + "&after=" + lastSeq, {
          stations: (data) => showHealth(data.console),
          station: apply,
        });
      });
    getJson("/api/stations").then((data) => showHealth(data.console), () => {});
  }

  start();
})();
