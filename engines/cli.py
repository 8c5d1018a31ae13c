"""edge-engines: build and check the TensorRT plans of a bundle on the machine that runs them.

  edge-engines build BUNDLE [--precision fp16]   build encoder and flow plans (minutes, once)
  edge-engines check BUNDLE [--precision fp16]   say whether this machine's plans are present and valid
  --state-dir DIR: the daemon's state_dir. Where the bundle is read-only to the service, the
  daemon builds its plans under DIR/engines/<bundle id>; check looks there too, and build writes
  there when it cannot write the bundle (default: $STATE_DIRECTORY, as systemd sets it).
Exit codes: 0 done, 1 plans missing or invalid (check), 2 bad input or no GPU/TensorRT.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engines.backends.base import BackendError
from engines.bundle import BundleError, open_bundle
from engines.tensorrt_plans import PRECISIONS, PlanMismatch, PlansMissing, engines_directory, plans_directory, read_plan_manifest, select_plans
from engines.version import version_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-engines", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("build", "check"))
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16")
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch the plans accept (default 8)")
    parser.add_argument("--workspace-mb", type=int, default=1024, help="TensorRT builder workspace (default 1024 MiB)")
    parser.add_argument("--state-dir", type=Path, default=os.environ.get("STATE_DIRECTORY") or None, help="the daemon's state_dir (where it keeps plans for a read-only bundle)")
    parser.add_argument("--version", action="version", version=version_line("edge-engines"))
    args = parser.parse_args(argv)
    try:
        bundle = open_bundle(args.bundle)
    except (BundleError, OSError) as error:  # OSError: a bundle this user cannot read names its path too
        print(f"edge-engines: {error}", file=sys.stderr)
        return 2
    directory = engines_directory(bundle, args.state_dir)
    if args.command == "check":
        directory = plans_directory(bundle, args.state_dir) or directory
        print(f"plans in {directory}")
        for record in read_plan_manifest(directory).values():
            print(f"{record.plan}: {record.target.describe()}, {record.typing} typing, built {record.built} on {record.gpu}")
    try:
        from engines.tensorrt_build import build_plans, current_target

        target, gpu = current_target(args.precision)
        if args.command == "build":
            if args.max_batch < 1:
                print("edge-engines: --max-batch must be at least 1", file=sys.stderr)
                return 2
            build_plans(bundle, args.precision, args.max_batch, args.workspace_mb, directory)
        plans = select_plans(bundle, target, directory)
    except (PlansMissing, PlanMismatch) as error:
        print(f"edge-engines: {error}", file=sys.stderr)
        return 1
    except BackendError as error:
        print(f"edge-engines: {error}", file=sys.stderr)
        return 2
    print(f"plans for {target.describe()} on {gpu}: " + ", ".join(str(p) for p in plans.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
