"""What the daemon's and the console's YAML configs share: the error type, paths relative to the
config file, readable files and MQTT topic prefixes, each as a pydantic field type."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import AfterValidator, StringConstraints, ValidationInfo


class ConfigError(ValueError):
    """A config problem; str() is a message naming the file (or flag), the key and its line."""


def resolve_path(value: str, info: ValidationInfo) -> str:
    """Relative paths in a config are relative to the config file, not to the working directory
    (the service's is /); validation gets the file's folder as context["base"]."""
    base = (info.context or {}).get("base")
    return value if base is None or os.path.isabs(value) else str((base / value).resolve())


def _readable(value: str) -> str:
    if not os.access(value, os.R_OK):
        raise ValueError(f"cannot read {value}")
    if os.path.isdir(value):
        raise ValueError(missing_path(value, "file"))
    return value


def check_ca_file(value: str) -> str:
    """The CA certificates loaded as paho will load them, so a wrong file is a config error when
    the config is read, not a traceback when the service starts."""
    try:
        ssl.create_default_context(cafile=value)
    except (ssl.SSLError, OSError, ValueError) as error:
        raise ValueError(f"{value} holds no CA certificate in PEM form ({error}); a DER certificate converts with `openssl x509 -inform der -in CA.der -out ca.pem`") from None
    return value


def check_client_certificate(cert_file: str, key_file: str, key_password: str | None = None) -> None:
    """The client certificate and its key loaded as paho will load them."""
    try:
        ssl.create_default_context().load_cert_chain(cert_file, key_file, key_password)
    except (ssl.SSLError, OSError, ValueError) as error:
        key = "its key" if key_password is None else "its key (with the key password)"
        raise ValueError(f"cert_file {cert_file} and key_file {key_file} are not a PEM certificate and {key} ({error})") from None


def valid_topic_part(text: str, allow_slash: bool) -> bool:
    """Non-empty, no wildcard or NUL, no empty level (and no level at all where allow_slash is off)."""
    if not text or any(c in text for c in "+#\0"):
        return False
    if not allow_slash and "/" in text:
        return False
    return all(level for level in text.split("/"))


MAX_STATION_NAME = 128
MAX_STATION_NAME_BYTES = 200  # in UTF-8: it names files (audit/<name>.jsonl.N), and a file name has 255 bytes


def valid_station_name(name: str) -> bool:
    """A station name: one MQTT topic level, the name of its audit, outbox and review files, and
    what the console shows. So no wildcard or '/', only printable characters (no control or
    invisible ones such as a non-breaking space), not '.' or '..', at most 128 characters. The
    daemon refuses at config load what the console would not show."""
    if not (0 < len(name) <= MAX_STATION_NAME and len(name.encode("utf-8", "replace")) <= MAX_STATION_NAME_BYTES):
        return False
    return name not in (".", "..") and not any(c in name for c in "+#/") and all(c.isprintable() for c in name)


def _topic_prefix(value: str) -> str:
    if not valid_topic_part(value, allow_slash=True):
        raise ValueError("must be non-empty, without +, # or empty levels")
    return value


PathSetting = Annotated[str, StringConstraints(min_length=1), AfterValidator(resolve_path)]
ReadableFile = Annotated[PathSetting, AfterValidator(_readable)]
CaFile = Annotated[ReadableFile, AfterValidator(check_ca_file)]
TopicPrefix = Annotated[str, AfterValidator(_topic_prefix)]


def read_secret(path: str | None) -> str | None:
    """A password file's content without its line end; None where no file is given."""
    if path is None:
        return None
    try:
        return Path(path).read_text().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {path} ({getattr(error, 'strerror', None) or error})") from None


def read_password(password_file: str | None) -> str | None:
    """The MQTT password from `password_file`, else from the systemd credential mqtt_password
    ($CREDENTIALS_DIRECTORY) when there is one; None when neither is given."""
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if password_file is None and credentials and Path(credentials, "mqtt_password").is_file():
        password_file = str(Path(credentials, "mqtt_password"))
    return read_secret(password_file)


def yaml_error_line(path: Path, error: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: where, and what the parser expected (PyYAML's own text
    spans several lines and quotes the file back)."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        problem = " ".join(str(part) for part in (error.context, error.problem) if part)
        return f"{path}: not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"{path}: not valid YAML: {' '.join(str(error).split())}"


def missing_path(value: str, wanted: str) -> str:
    """Why a path that should be a `wanted` ("folder" or "file") is not one."""
    if Path(value).is_dir():
        return f"{value} is a folder, not a {wanted}"
    if Path(value).exists():
        return f"{value} is a file, not a {wanted}" if wanted == "folder" else f"{value} is not a regular file"
    return f"{value} not found"
