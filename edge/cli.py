"""edge-inspect --config FILE [--validate-config], and edge-inspect teach (edge/teach_cli.py)."""

from __future__ import annotations

import argparse
import logging
import sys

from engines.version import version_line

EXIT_OK, EXIT_FAILED, EXIT_BAD_CONFIG = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["teach"]:
        from edge import teach_cli

        teach = argparse.ArgumentParser(prog="edge-inspect teach", description="Collect good parts from a running station's camera into a teach-in folder.")
        teach_cli.add_arguments(teach)
        return teach_cli.run(teach.parse_args(argv[1:]))
    parser = argparse.ArgumentParser(prog="edge-inspect", description="Inspect parts with a calibrated CFLOW-AD bundle and publish verdicts over MQTT.")
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--validate-config", action="store_true", help="check the config (and its bundles) and exit")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--version", action="version", version=version_line("edge-inspect"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    from edge.config import ConfigError, load_config
    from engines.backends import BackendError
    from engines.bundle import BundleError, open_bundle

    try:
        config = load_config(args.config, check_frames=args.validate_config)
    except ConfigError as error:
        print(f"edge-inspect: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.validate_config:
        for camera in config.cameras:
            for recipe, bundle in config.recipes_of(camera).items():
                try:
                    open_bundle(bundle, public_key=config.bundle_public_key)
                except BundleError as error:
                    print(f"edge-inspect: station {camera.station}, recipe {recipe}: {error}", file=sys.stderr)
                    return EXIT_BAD_CONFIG
        print(f"{args.config}: OK ({len(config.cameras)} camera(s))")
        return EXIT_OK

    from edge.daemon import Daemon

    daemon = Daemon(config)
    daemon.install_signal_handlers()
    try:
        return daemon.run()
    except (BundleError, BackendError) as error:
        print(f"edge-inspect: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG


if __name__ == "__main__":
    sys.exit(main())
