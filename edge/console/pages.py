"""The HTML of the pages: small shells the page's script fills from the JSON endpoints, and the
login form.

The server writes no data into the markup beyond the station's name, escaped; the scripts build
everything else with textContent and DOM calls, never innerHTML, so nothing a publisher puts in
a part id, a cause or an alarm message can become markup. No inline script or style: the
Content-Security-Policy allows only this origin's files.
"""

from __future__ import annotations

from html import escape

_NAV = (("/", "Line"), ("/rejects", "Rejects"), ("/metrics", "Metrics"))


def _page(title: str, script: str | None, body: str, data: dict[str, str] | None = None, current: str = "") -> str:
    attributes = "".join(f' data-{escape(key)}="{escape(value)}"' for key, value in (data or {}).items())
    current_mark = ' aria-current="page"'
    page_script = f'<script src="/static/{escape(script)}" defer></script>\n' if script else ""
    nav = "".join(f'<a href="{href}"{current_mark if href == current else ""}>{escape(label)}</a>' for href, label in _NAV)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · edge-console</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/console.css">
<script src="/static/common.js" defer></script>
{page_script}</head>
<body{attributes}>
<header><span class="brand">edge-console</span><nav>{nav}</nav><span id="health" data-testid="health"></span><span id="user" class="user" data-testid="user"></span></header>
<main>
{body}
</main>
</body>
</html>
"""


def overview() -> str:
    return _page(
        "Line",
        "overview.js",
        """<h1>Line overview</h1>
<table class="stations" data-testid="stations-table">
<thead><tr><th>Station</th><th>Status</th><th>Recipe · bundle</th><th>Parts/s</th><th>Reject rate</th><th>Latency p50 / p99</th>
<th>Dropped</th><th>Outbox</th><th>Drift</th><th>Alarms</th><th>Last message</th></tr></thead>
<tbody id="stations"><tr class="empty"><td colspan="11">No station has published yet.</td></tr></tbody>
</table>""",
        current="/",
    )


def station(name: str) -> str:
    heading = escape(name)
    return _page(
        name,
        "station.js",
        f"""<h1>Station <span id="station-name">{heading}</span> <span id="status" class="badge" data-testid="station-status">…</span></h1>
<p id="summary" class="summary"></p>
<ul id="alarms" class="alarms" data-testid="alarms"></ul>
<div class="station-grid">
<section class="live">
<h2>Live view</h2>
<p id="verdict" class="verdict" data-testid="last-verdict">–</p>
<img id="preview" data-testid="preview" alt="latest inspected part of {heading}" hidden>
<p id="preview-caption" class="caption">No preview yet.</p>
</section>
<div class="side">
<section aria-labelledby="recipe-heading">
<h2 id="recipe-heading">Recipe</h2>
<p>Active: <strong id="recipe" data-testid="active-recipe">–</strong></p>
<form id="recipe-form" class="action" data-testid="recipe-form" hidden>
<label for="recipe-select">Switch to</label>
<select id="recipe-select" name="recipe" data-testid="recipe-select" required></select>
<button type="submit" data-testid="recipe-apply">Apply</button>
</form>
<p id="recipe-result" class="caption" role="status" aria-live="polite" data-testid="recipe-result"></p>
</section>
<section aria-labelledby="teach-heading">
<h2 id="teach-heading">Teach-in</h2>
<p id="teach-state" data-testid="teach-state">–</p>
<form id="teach-form" class="action" data-testid="teach-form" hidden>
<label>Folder <input id="teach-name" name="name" maxlength="64" autocomplete="off" placeholder="by time" aria-describedby="teach-help"></label>
<label>Parts <input id="teach-count" name="count" type="number" min="1" max="10000" step="1" placeholder="station default" aria-describedby="teach-help"></label>
<button type="submit" data-testid="teach-start">Start</button>
<button type="button" id="teach-stop" data-testid="teach-stop">Stop</button>
<span id="teach-help" class="caption">Collects good parts for edge-calibrate; both fields optional.</span>
</form>
<p id="teach-result" class="caption" role="status" aria-live="polite" data-testid="teach-result"></p>
</section>
<section aria-labelledby="labels-heading">
<h2 id="labels-heading">Operator labels</h2>
<dl id="label-counts" class="stats" data-testid="label-counts"></dl>
</section>
<section>
<h2>Station stats</h2>
<dl id="stats" class="stats" data-testid="stats"></dl>
</section>
</div>
</div>
<section>
<h2>Last 50 parts</h2>
<div id="strip" class="strip" data-testid="strip" role="group" aria-label="last 50 parts, oldest first: pick one to see it and label it"></div>
<div id="part-detail" class="part-detail" data-testid="part-detail" hidden></div>
</section>
<section>
<h2>Score over time</h2>
<svg id="chart" class="chart" data-testid="score-chart" viewBox="0 0 800 240" role="img" aria-label="score of recent parts against the threshold"></svg>
<p class="legend"><span class="key pass"></span>pass <span class="key reject"></span>reject <span class="key threshold"></span>threshold</p>
</section>
<section>
<h2>Recent pass scores against calibration</h2>
<svg id="histogram" class="chart" data-testid="histogram" viewBox="0 0 800 200" role="img" aria-label="histogram of recent pass scores with the calibration quantiles"></svg>
<p id="drift" class="caption"></p>
</section>""",
        data={"station": name},
    )


def rejects() -> str:
    return _page(
        "Rejects",
        "rejects.js",
        """<h1>Rejects</h1>
<form id="search" class="search" method="get" action="/rejects">
<label>Part id <input name="part_id" id="part_id" maxlength="256" autocomplete="off"></label>
<label>Station <input name="station" id="station" maxlength="128" autocomplete="off"></label>
<label>From <input type="datetime-local" name="since" id="since" step="1"></label>
<label>To <input type="datetime-local" name="until" id="until" step="1"></label>
<button type="submit">Search</button> <a href="/rejects">Clear</a>
</form>
<p id="gallery-status" class="caption" data-testid="gallery-status"></p>
<div id="gallery" class="gallery" data-testid="gallery"></div>
<p><button id="older" type="button" hidden>Older rejects</button></p>""",
        current="/rejects",
    )


def login(next_path: str, enabled: bool, error: str | None = None, user: str | None = None) -> str:
    """The login form; `error` from the last try, escaped like everything else."""
    target = escape(next_path)
    if not enabled:
        body = f"""<h1>Log in</h1>
<p class="bad" role="alert" data-testid="login-error">{escape(error or "Logins are off on this console.")}</p>
<p><a href="{target}">Back</a></p>"""
        return _page("Log in", None, body)
    signed_in = f'<p class="caption" data-testid="signed-in">Logged in as {escape(user)}; logging in again replaces that session.</p>' if user else ""
    problem = f'<p class="bad" role="alert" data-testid="login-error">{escape(error)}</p>' if error else ""
    body = f"""<h1>Log in</h1>
<p class="caption">Reading needs no login; the recipe, teach-in and label controls do.</p>
{signed_in}{problem}
<form method="post" action="/login" class="login" data-testid="login-form">
<input type="hidden" name="next" value="{target}">
<label>User name <input name="username" id="username" autocomplete="username" maxlength="64" required autofocus></label>
<label>Password <input type="password" name="password" id="password" autocomplete="current-password" maxlength="1024" required></label>
<button type="submit" data-testid="login-submit">Log in</button>
</form>"""
    return _page("Log in", None, body)
