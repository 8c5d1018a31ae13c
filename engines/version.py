"""What every command answers to --version: the package version and the bundle formats it reads."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("edge-inspect")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def version_line(prog: str) -> str:
    from engines.bundle import READABLE_FORMAT_VERSIONS

    formats = ", ".join(str(v) for v in READABLE_FORMAT_VERSIONS)
    return f"{prog} {package_version()} (reads bundle format {formats})"
