"""The console's operator logins: scrypt password hashes (stdlib only) in a users file, and
`edge-console passwd`, which writes it.

The file holds one `username:hash` line per operator (blank lines and `#` comments are kept);
a hash reads `scrypt$n$r$p$salt$hash` (n, r, p: scrypt's cost; salt and hash in base64). The
console reads it when it starts and again whenever it changes, so adding an operator or changing
a password needs no restart (except with a systemd credential, which is copied at start).
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import hmac
import os
import re
import secrets
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# scrypt at n=2**15, r=8: 32 MiB and about 0.1 s per check on a line PC. Enough to make a stolen
# users file slow to attack, cheap enough for a login now and then.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SALT_BYTES, HASH_BYTES = 16, 32
# What a users file may ask of us: a hand-edited or hostile line must not cost gigabytes per login.
MAX_N, MAX_R, MAX_P = 2**20, 32, 16
MAX_MEMORY = 256 * 1024 * 1024
MIN_PASSWORD, MAX_PASSWORD = 8, 1024
MAX_USERS = 1000
MAX_FILE_BYTES = 1024 * 1024
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
USERNAME_RULE = "1-64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit"

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class UsersFileError(ValueError):
    """A users file that cannot be used; str() names the file and the line."""


@dataclass(frozen=True)
class Scrypt:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def _scrypt(password: str, n: int, r: int, p: int, salt: bytes, length: int) -> bytes:
    # OpenSSL refuses above maxmem (default 32 MiB, just under what n=2**15, r=8 needs).
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=min(MAX_MEMORY, 2 * 128 * n * r * p + 2**20))


def hash_password(password: str, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, n, r, p, salt, HASH_BYTES)
    return f"scrypt${n}${r}${p}${base64.b64encode(salt).decode('ascii')}${base64.b64encode(digest).decode('ascii')}"


def parse_hash(text: str) -> Scrypt:
    """The parts of a stored hash; ValueError says what is wrong with it."""
    fields = text.split("$")
    if len(fields) != 6 or fields[0] != "scrypt":
        raise ValueError("the hash is not scrypt$n$r$p$salt$hash (make it with edge-console passwd)")
    try:
        n, r, p = (int(field) for field in fields[1:4])
        salt = base64.b64decode(fields[4], validate=True)
        digest = base64.b64decode(fields[5], validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("the hash's n, r, p are not numbers or its salt or hash is not base64") from None
    if not (2 <= n <= MAX_N and n & (n - 1) == 0) or not 1 <= r <= MAX_R or not 1 <= p <= MAX_P or 128 * n * r * p > MAX_MEMORY:
        raise ValueError(f"scrypt cost n={n} r={r} p={p} is out of bounds (n a power of 2 up to {MAX_N}, r up to {MAX_R}, p up to {MAX_P})")
    if len(salt) < 8 or not 16 <= len(digest) <= 64:
        raise ValueError("the hash's salt or digest is too short")
    return Scrypt(n, r, p, salt, digest)


def verify_password(password: str, stored: Scrypt) -> bool:
    """Whether `password` makes `stored`, compared in constant time."""
    if len(password) > MAX_PASSWORD:
        return False
    return hmac.compare_digest(_scrypt(password, stored.n, stored.r, stored.p, stored.salt, len(stored.digest)), stored.digest)


def read_users(path: str | os.PathLike) -> dict[str, Scrypt]:
    """Username -> hash from a users file; UsersFileError names the file and line of a bad one."""
    file = Path(path)
    try:
        with file.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise UsersFileError(f"cannot read {file} ({error.strerror or error})") from None
    if len(data) > MAX_FILE_BYTES:
        raise UsersFileError(f"{file} is over {MAX_FILE_BYTES // 1024} kB; a users file holds one short line per operator")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsersFileError(f"{file} is not UTF-8 text (byte {error.start})") from None
    users: dict[str, Scrypt] = {}
    for number, line in enumerate(text.splitlines(), 1):
        entry = _entry(line)
        if entry is None:
            continue
        name, hashed = entry
        where = f"{file} line {number}"
        if not USERNAME.fullmatch(name):
            raise UsersFileError(f"{where}: user name {name[:64]!r} is not {USERNAME_RULE}")
        if name in users:
            raise UsersFileError(f"{where}: user {name} is given twice")
        try:
            users[name] = parse_hash(hashed)
        except ValueError as error:
            raise UsersFileError(f"{where}: user {name}: {error}") from None
        if len(users) > MAX_USERS:
            raise UsersFileError(f"{where}: more than {MAX_USERS} users")
    return users


def _entry(line: str) -> tuple[str, str] | None:
    """(name, hash) of a line; None for a blank line or a comment. A line without a colon is
    returned with an empty hash, which parse_hash refuses naming the line."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    name, _, hashed = stripped.partition(":")
    return name.strip(), hashed.strip()


# -- edge-console passwd -----------------------------------------------------------------------


def passwd_main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="edge-console passwd",
        description="Add an operator login to the console's users file, or change its password (asked twice on a terminal; one line on stdin otherwise).",
    )
    parser.add_argument("username", help=f"the operator's login ({USERNAME_RULE})")
    parser.add_argument("--users-file", required=True, metavar="PATH", help="the users file (created 0600 if missing); the console's users_file")
    parser.add_argument("--delete", action="store_true", help="remove the user instead")
    args = parser.parse_args(argv)
    if not USERNAME.fullmatch(args.username):
        print(f"edge-console passwd: user name {args.username[:64]!r} is not {USERNAME_RULE}", file=sys.stderr)
        return EXIT_BAD_INPUT
    path = Path(args.users_file)
    lines: list[str] = []
    if path.exists():
        try:
            read_users(path)  # refuse to rewrite a file we cannot read whole
            lines = path.read_text(encoding="utf-8").splitlines()
        except (UsersFileError, OSError, UnicodeDecodeError) as error:
            print(f"edge-console passwd: {error}; fix or move it first", file=sys.stderr)
            return EXIT_BAD_INPUT
    elif not path.parent.is_dir():
        print(f"edge-console passwd: {path.parent} is not a directory", file=sys.stderr)
        return EXIT_BAD_INPUT
    index = next((i for i, line in enumerate(lines) if (entry := _entry(line)) is not None and entry[0] == args.username), None)
    if args.delete:
        if index is None:
            print(f"edge-console passwd: no user {args.username} in {path}", file=sys.stderr)
            return EXIT_BAD_INPUT
        del lines[index]
        done = f"{args.username}: removed from {path}"
    else:
        password = _read_password(args.username)
        if password is None:
            return EXIT_BAD_INPUT
        line = f"{args.username}:{hash_password(password)}"
        if index is None:
            lines.append(line)
            done = f"{args.username}: added to {path}"
        else:
            lines[index] = line
            done = f"{args.username}: password changed in {path}"
    try:
        _write_atomically(path, "".join(line + "\n" for line in lines))
    except OSError as error:
        print(f"edge-console passwd: cannot write {path} ({error.strerror or error})", file=sys.stderr)
        return EXIT_FAILED
    print(done)
    print("A running console reads the file again at the next login (a systemd credential: after `systemctl restart edge-console`).")
    return EXIT_OK


def _read_password(username: str) -> str | None:
    if sys.stdin.isatty():
        first = getpass.getpass(f"Password for {username}: ")
        if getpass.getpass("Again: ") != first:
            print("edge-console passwd: the two passwords differ; nothing changed", file=sys.stderr)
            return None
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        print(f"edge-console passwd: a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters; nothing changed", file=sys.stderr)
        return None
    return password


def _write_atomically(path: Path, text: str) -> None:
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), mode)
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
