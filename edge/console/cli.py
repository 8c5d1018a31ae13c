"""edge-console [--config FILE] [flags]: the line console (DESIGN.md, "The line console").
edge-console passwd USERNAME --users-file PATH: add an operator login (or change its password).

Exit status: 0 after a clean stop, 1 when it could not start (the port is taken), 2 for a bad
config or flag (the message names the key; restarting will not fix it).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import ssl
import sys

from engines.version import version_line

EXIT_OK, EXIT_FAILED, EXIT_BAD_CONFIG = 0, 1, 2

log = logging.getLogger("edge.console")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-console",
        description="The line console: follows every edge-inspect station on the MQTT broker; web pages, history and Prometheus metrics.",
        epilog="edge-console passwd USERNAME --users-file PATH: add an operator login for the write actions (recipe, teach-in, labels), or change its password.",
    )
    parser.add_argument("--config", help="YAML config file (keys: mqtt, listen, database, retention_days, retention_mb, users_file, session_hours, https); flags override it")
    parser.add_argument("--listen", metavar="HOST:PORT", help="address of the web pages (default 127.0.0.1:8080; port 0 picks a free one)")
    parser.add_argument("--database", metavar="PATH", help="history database file (default $STATE_DIRECTORY/history.sqlite3, else ./history.sqlite3)")
    parser.add_argument("--mqtt-host", metavar="HOST", help="broker host (default localhost)")
    parser.add_argument("--mqtt-port", metavar="PORT", type=int, help="broker port (default 1883)")
    parser.add_argument("--topic-prefix", metavar="PREFIX", help="the stations' topic prefix (default edge)")
    parser.add_argument("--retention-days", metavar="DAYS", type=float, help="keep history this many days (default 30)")
    parser.add_argument("--retention-mb", metavar="MB", type=float, help="keep history under this many megabytes (default 1024)")
    parser.add_argument("--validate-config", action="store_true", help="check the config and exit")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--version", action="version", version=version_line("edge-console"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["passwd"]:
        from edge.console.passwords import passwd_main

        return passwd_main(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    from edge.console.config import ConfigError, load_config

    flags = {
        "--listen": args.listen,
        # A path on the command line is relative to where the command runs, not to the file.
        "--database": os.path.abspath(args.database) if args.database else None,
        "--mqtt-host": args.mqtt_host,
        "--mqtt-port": args.mqtt_port,
        "--topic-prefix": args.topic_prefix,
        "--retention-days": args.retention_days,
        "--retention-mb": args.retention_mb,
    }
    try:
        config = load_config(args.config, flags)
    except ConfigError as error:
        print(f"edge-console: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.validate_config:
        print(f"{args.config or 'flags'}: OK")
        return EXIT_OK

    return run(config)


def run(config) -> int:
    """Listen, connect to the broker and serve until SIGTERM; the exit code."""
    from edge.console.service import Console, listening_socket, serve

    host, port = config.listen_address
    try:
        sock = listening_socket(host, port)
    except socket.gaierror as error:
        print(f"edge-console: listen: cannot resolve {host!r} ({error.strerror}); set listen to an address of this machine", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except OSError as error:
        if error.errno == errno.EADDRNOTAVAIL:
            print(f"edge-console: listen: {host} is no address of this machine", file=sys.stderr)
            return EXIT_BAD_CONFIG
        # In use (another console, or the last one still stopping): worth a restart.
        print(f"edge-console: cannot listen on {config.listen} ({error.strerror})", file=sys.stderr)
        return EXIT_FAILED
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    try:
        console = Console(config)
    except (ssl.SSLError, OSError) as error:
        # The TLS files were checked at load; this is one that changed since (or a race with it).
        sock.close()
        print(f"edge-console: mqtt.tls: cannot load the TLS files ({error})", file=sys.stderr)
        return EXIT_BAD_CONFIG
    console.start()
    scheme = "https" if config.https else "http"
    log.info("serving %s://%s:%d/ for the stations under %s/ on %s:%d", scheme, shown, bound_port, config.mqtt.topic_prefix, config.mqtt.host, config.mqtt.port)
    if config.users_path is None:
        log.info("read-only: no users file, so no operator can log in to send commands (README, 'Operator actions')")
    else:
        log.info("operator logins from %s; write actions (recipe, teach-in, labels) need one", config.users_path)
        if not console.loopback_only and config.https is None:
            log.warning("operators log in over plain HTTP on %s: passwords and session cookies cross the network readable; set https (a certificate) or serve through a TLS proxy", config.listen)
    try:
        serve(console, sock)
    finally:
        console.stop()
        sock.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
