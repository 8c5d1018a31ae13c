"""edge-console: the line console, an MQTT client of the stations' broker with web pages,
history and Prometheus metrics (DESIGN.md, "The line console").

It only reads what the stations publish; it never publishes to them. It imports neither torch
nor calibration/: it runs on a small box beside the broker.
"""
