"""/metrics: every station's series (label `station`) and the console's own health, read from
the live model at scrape time.

A collector, not prometheus_client's Counter/Gauge objects: the numbers already live in the
model (what the stations said last), and copying them into metric objects on every message
would be work at 1000 messages a second for a scrape every 15 s.

Series from the stations' `stats` are the daemon's own counts: they restart from zero with
the daemon, which Prometheus' rate() understands for counters. parts_total and rejects_total
are what this console received (deduplicated), so rejects can be split by cause.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from edge.alarms import KNOWN_ALARMS
from edge.console.counters import ConsoleCounters
from edge.console.history import History
from edge.console.live import LiveModel
from edge.console.payloads import StatsMessage

# Daemon counters from `stats`, exposed as counters: (stats key, metric name, help).
_STATION_COUNTERS = (
    ("dropped_frames", "edge_station_dropped_frames", "Frames the station dropped because inference fell behind (daemon's count since its start)"),
    ("bad_frames", "edge_station_bad_frames", "Frames that could not be inspected: unreadable, or smaller than the ROI"),
    ("inference_errors", "edge_station_inference_errors", "Inspections that failed in the engine"),
    ("not_inspected", "edge_station_not_inspected", "Parts answered as not inspected"),
    ("uninspected", "edge_station_uninspected", "Parts rejected without an inspection: unreadable, no frame, not inspected, refused recipe or trigger"),
    ("trigger_timeouts", "edge_station_trigger_timeouts", "Triggers that got no frame in time"),
    ("bad_triggers", "edge_station_bad_triggers", "Trigger payloads the station refused"),
    ("results_dropped", "edge_station_results_dropped", "Results not sent while the broker was away (rejects wait in the outbox)"),
    ("audit_write_errors", "edge_station_audit_write_errors", "Audit log writes that failed"),
)


class ConsoleCollector(Collector):
    def __init__(self, model: LiveModel, counters: ConsoleCounters, history: History | None, broker_connected: Callable[[], bool], sessions: Callable[[], int] | None = None):
        self.model = model
        self.counters = counters
        self.history = history
        self.broker_connected = broker_connected
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        yield from self._stations()
        yield from self._console()

    def _stations(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("edge_station_up", "1 while the station says online (its retained status), 0 offline or unknown", labels=["station"])
        parts = CounterMetricFamily("edge_station_parts", "Parts this console received from the station (deduplicated)", labels=["station"])
        rejects = CounterMetricFamily("edge_station_rejects", "Parts received that did not pass, by cause (the verdict for parts never inspected)", labels=["station", "cause"])
        fps = GaugeMetricFamily("edge_station_parts_per_second", "Parts per second, as the station reports", labels=["station"])
        reject_rate = GaugeMetricFamily("edge_station_reject_rate", "Share of answered parts rejected, inspected or not, as the station reports", labels=["station"])
        latency = GaugeMetricFamily("edge_station_latency_seconds", "Capture-to-answer latency percentiles the station reports", labels=["station", "quantile"])
        outbox = GaugeMetricFamily("edge_station_outbox_pending", "Rejects waiting in the station's outbox for the broker", labels=["station"])
        drift = GaugeMetricFamily("edge_station_drift_spreads", "Median pass score's shift from calibration, in calibration q50..q95 spreads", labels=["station"])
        alarms = GaugeMetricFamily("edge_station_alarms_active", "Alarms the station has raised and not cleared", labels=["station"])
        alarm = GaugeMetricFamily("edge_station_alarm", "1 for each active alarm, by its key", labels=["station", "alarm"])
        camera = GaugeMetricFamily("edge_station_camera_ok", "1 while the station reports its camera ok", labels=["station"])
        labels = CounterMetricFamily("edge_station_labels", "Operators' labels the station filed, by what they say of its verdict (false_rejects, misses, ...)", labels=["station", "label"])
        teach = GaugeMetricFamily("edge_station_teach_active", "1 while the station collects good parts for a teach-in", labels=["station"])
        counters = {key: CounterMetricFamily(name, text, labels=["station"]) for key, name, text in _STATION_COUNTERS}
        for name, status, stats, seen, by_cause, active in self.model.metrics_view():
            up.add_metric([name], 1.0 if status == "online" else 0.0)
            parts.add_metric([name], seen)
            for cause, count in sorted(by_cause.items()):
                rejects.add_metric([name, cause], count)
            alarms.add_metric([name], active)
            if stats is not None:
                _add_stats(name, stats, fps, reject_rate, latency, outbox, drift, camera, counters)
                if stats.labels is not None:
                    for key, value in stats.labels.model_dump().items():
                        labels.add_metric([name, key], value)
                if stats.teach is not None:
                    teach.add_metric([name], 1.0 if stats.teach.active else 0.0)
        for name, key in self.model.alarm_keys():
            # A publisher inventing alarm names must not grow Prometheus's label set without end.
            alarm.add_metric([name, key if key in KNOWN_ALARMS else "other"], 1.0)
        yield from (up, parts, rejects, fps, reject_rate, latency, outbox, drift, alarms, alarm, camera, labels, teach, *counters.values())

    def _console(self) -> Iterator[Metric]:
        c = self.counters
        messages = _labelled("edge_console_messages", "MQTT messages received, by topic kind", ["kind"], c.messages.items())
        malformed = _labelled("edge_console_malformed", "Payloads refused, by topic kind and reason", ["kind", "reason"], c.malformed.items())
        deleted = _labelled("edge_console_retention_deleted", "Rows deleted by retention, by table", ["table"], c.retention_deleted.items())
        failures = _labelled("edge_console_login_failures", "Operator logins refused, by reason (bad_credentials, throttled, users_file)", ["reason"], c.login_failures.items())
        commands = _labelled("edge_console_commands", "Operators' commands to the stations, by command and result (sent, not_sent, refused)", ["command", "result"], c.commands.items())
        yield messages
        yield malformed
        yield deleted
        yield failures
        yield commands
        yield CounterMetricFamily("edge_console_logins", "Operator logins that succeeded", value=c.logins.value)
        if self.sessions is not None:
            yield GaugeMetricFamily("edge_console_sessions", "Operator sessions open", value=self.sessions())
        yield CounterMetricFamily("edge_console_duplicates", "Parts received twice (a reject on both result and reject)", value=c.duplicates.value)
        yield CounterMetricFamily("edge_console_stations_refused", "Messages for stations past the console's cap", value=c.stations_refused.value)
        yield CounterMetricFamily("edge_console_db_errors", "History database errors", value=c.db_errors.value)
        yield CounterMetricFamily("edge_console_history_dropped", "Parts and heatmaps not written to history", value=c.history_dropped.value)
        yield CounterMetricFamily("edge_console_broker_connect_failures", "Failed connections to the broker", value=c.broker_connect_failures.value)
        yield GaugeMetricFamily("edge_console_broker_connected", "1 while connected to the broker", value=1.0 if self.broker_connected() else 0.0)
        yield GaugeMetricFamily("edge_console_stations", "Stations seen on the broker", value=len(self.model.names()))
        if self.history is not None:
            yield GaugeMetricFamily("edge_console_db_size_bytes", "History database and WAL on disk", value=self.history.size_bytes())
            yield GaugeMetricFamily("edge_console_history_ok", "1 while history writes succeed", value=1.0 if self.history.health.ok else 0.0)
            yield GaugeMetricFamily("edge_console_history_pending", "Parts and heatmaps waiting for the history writer", value=self.history.pending)


def _add_stats(name: str, stats: StatsMessage, fps, reject_rate, latency, outbox, drift, camera, counters: dict[str, CounterMetricFamily]) -> None:
    if stats.fps is not None:
        fps.add_metric([name], stats.fps)
    if stats.reject_rate is not None:
        reject_rate.add_metric([name], stats.reject_rate)
    if stats.latency_ms is not None:
        for quantile, value in (("0.5", stats.latency_ms.p50), ("0.95", stats.latency_ms.p95), ("0.99", stats.latency_ms.p99)):
            if value is not None:
                latency.add_metric([name, quantile], round(value / 1000.0, 9))  # no 0.038200000000000005
    if stats.outbox_pending is not None:
        outbox.add_metric([name], stats.outbox_pending)
    if stats.drift is not None and stats.drift.median_shift_in_spreads is not None:
        drift.add_metric([name], stats.drift.median_shift_in_spreads)
    if stats.camera is not None:
        camera.add_metric([name], 1.0 if stats.camera == "ok" else 0.0)
    for key, family in counters.items():
        value = getattr(stats, key)
        if value is not None:
            family.add_metric([name], value)


def registry(collector: ConsoleCollector) -> CollectorRegistry:
    """The console's own registry (not the global one): only what this module describes, plus
    the process's CPU and memory."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def _labelled(name: str, text: str, labels: list[str], counts) -> CounterMetricFamily:
    """A counter family from (label or tuple of labels, count) pairs; a key of the wrong shape is
    counted under "other" rather than breaking the scrape."""
    family = CounterMetricFamily(name, text, labels=labels)
    for key, count in counts:
        values = key if isinstance(key, tuple) else (key,)
        family.add_metric([str(v) for v in values] if len(values) == len(labels) else ["other"] * len(labels), count)
    return family
