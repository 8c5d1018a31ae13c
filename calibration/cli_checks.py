"""What the command-line tools check before any work starts (options, output paths) and how they
say no: one line naming the option or file, exit code 2. Light imports: edge-bundle uses them
without loading torch."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import NoReturn

EXIT_BAD_INPUT = 2


class OneLineErrors(argparse.ArgumentParser):
    """argparse's refusals as one line naming the option, not the whole usage text above it."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message} (see {self.prog} --help)\n")


class BadInput(ValueError):
    """An input refused before any work starts; the message names the file or option."""


def os_error_line(error: OSError) -> str:
    """One line naming the file, where str(OSError) would put the errno first."""
    if error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def check_can_create_in(folder: Path, named: Path, option: str) -> None:
    """Refuse when `folder` cannot be made or written: a file in its way, or a nearest existing
    folder that cannot be written. Nothing is left behind; missing folders are made when writing."""
    folder = folder.absolute()
    # os.path.exists: False rather than an error below a file or an unreadable folder; / exists.
    existing = next(p for p in (folder, *folder.parents) if os.path.exists(p))
    if not existing.is_dir():
        raise BadInput(f"{option} {named}: {existing} is a file, not a folder")
    reason = None if os.access(existing, os.W_OK | os.X_OK) else "permission denied"
    if reason is None:
        # root passes os.access everywhere; making a folder is what finds a read-only filesystem.
        try:
            os.rmdir(tempfile.mkdtemp(prefix=f".{named.name}.check.", dir=existing))
        except OSError as error:
            reason = error.strerror or str(error)
    if reason is not None:
        raise BadInput(f"{option} {named}: cannot write in {existing} ({reason}); choose a writable location")


def refuse_inside_bundle(output: Path, bundle: Path) -> None:
    """-o/--output may not lie inside a bundle: a file added there fails that bundle's check."""
    if output.resolve().is_relative_to(bundle.resolve()):
        raise BadInput(f"-o/--output {output}: inside the bundle {bundle}; a file added there fails that bundle's check, choose a folder outside it")


def check_output(output: Path, force: bool) -> None:
    """-o/--output, checked before training so that minutes of work are not thrown away at the end."""
    from engines.bundle import MANIFEST, replaceable_by_bundle

    option = "-o/--output"
    if output.is_file():
        raise BadInput(f"{option} {output}: is a file, not a bundle folder; choose another path")
    if output.exists():
        if not force:
            raise BadInput(f"{option} {output}: already exists; choose another output path or pass --force to replace it")
        if not replaceable_by_bundle(output):
            raise BadInput(f"{option} {output}: is a folder but not a bundle (no {MANIFEST}); --force replaces only a bundle, choose another path")
    # The bundle is written into a temporary folder beside it, then renamed into place.
    check_can_create_in(output.absolute().parent, output, option)


# Upper bounds for the options that size the work: past them a run exhausts memory or threads
# before it says anything (--threads 100000 crashed OpenCV's pool with a segfault; --augment and
# --coupling-blocks at 100000 grew past 6 GB in seconds). Each is far beyond any useful value.
MAX_THREADS = 256
MAX_AUGMENT_COPIES = 32  # --augment 1 is what unfixtured parts need (bench/README.md)
MAX_COUPLING_BLOCKS = 64  # the default is 8; 12 was measured


def whole_number(low: int, high: int | None = None):
    """An argparse type: an integer from low (to high); argparse names the option in its message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text}: must be at least {low}" + (f" and at most {high}" if high is not None else ""))
        return value

    return parse
