"""edge-console: the line console, an MQTT client of the stations' broker with web pages,
history and Prometheus metrics (DESIGN.md, "The line console").

It reads what the stations publish; it publishes only the commands a logged-in operator sends
(recipe, teach, feedback: edge/console/actions.py). It imports neither torch nor calibration/: it
runs on a small box beside the broker.
"""
