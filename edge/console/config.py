"""edge-console's YAML config, validated strictly: an unknown key, a wrong type or a bad value is
refused with its dotted key and line (or the command-line flag that set it).

```yaml
mqtt: {host: broker.local, port: 8883, topic_prefix: edge, username: console,
       password_file: /etc/edge-console/mqtt.pw, tls: {ca_file: /etc/edge-console/ca.pem}}
listen: 127.0.0.1:8080
database: /var/lib/edge-console/history.sqlite3
retention_days: 30
retention_mb: 2048
users_file: /etc/edge-console/users     # operator logins (edge-console passwd); without it: read-only
session_hours: 12
https: {cert_file: /etc/edge-console/web.pem, key_file: /etc/edge-console/web.key}
```
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, StrictInt, StringConstraints, ValidationError, model_validator
from pydantic_core import ErrorDetails

from edge.config_fields import CaFile, ConfigError, PathSetting, ReadableFile, TopicPrefix, check_client_certificate, read_password, yaml_error_line
from edge.console.passwords import UsersFileError, read_users

__all__ = ["ConfigError", "ConsoleConfig", "load_config"]


def _database(value: str) -> str:
    if Path(value).is_dir():
        raise ValueError(f"{value} is a directory; name the database file in it (e.g. {Path(value) / 'history.sqlite3'})")
    return value


def _listen(value: str) -> str:
    parse_listen(value)
    return value


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT, with an IPv6 host in brackets ([::1]:8080). Port 0 picks a free one."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:8080), got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"put an IPv6 host in brackets ([{host}]:{port})")
    return host, int(port)


def _default_database() -> str:
    # systemd's StateDirectory= sets $STATE_DIRECTORY; elsewhere the working directory.
    return str(Path(os.environ.get("STATE_DIRECTORY", "."), "history.sqlite3"))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TlsSettings(_Section):
    ca_file: CaFile
    cert_file: ReadableFile | None = None
    key_file: ReadableFile | None = None

    @model_validator(mode="after")
    def _client_certificate_is_whole(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.cert_file is not None and self.key_file is not None:
            check_client_certificate(self.cert_file, self.key_file)
        return self


class MqttSettings(_Section):
    host: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)] = "localhost"
    port: Annotated[StrictInt, Field(ge=1, le=65535)] = 1883
    topic_prefix: TopicPrefix = "edge"
    username: Annotated[str, StringConstraints(min_length=1)] | None = None
    password_file: ReadableFile | None = None  # else $CREDENTIALS_DIRECTORY/mqtt_password when present
    tls: TlsSettings | None = None
    # Private: no key of the file, and out of repr() and logs.
    _password: str | None = PrivateAttr(default=None)

    @property
    def password(self) -> str | None:
        return self._password

    @model_validator(mode="after")
    def _read_password(self) -> MqttSettings:
        self._password = read_password(self.password_file)
        return self


class HttpsSettings(_Section):
    """The pages over TLS: the server's certificate (with its chain) and its unencrypted key."""

    cert_file: ReadableFile
    key_file: ReadableFile

    @model_validator(mode="after")
    def _loads(self) -> HttpsSettings:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.cert_file, self.key_file)
        except (ssl.SSLError, OSError, ValueError) as error:
            raise ValueError(f"cert_file {self.cert_file} and key_file {self.key_file} are not a PEM certificate and its unencrypted key ({error})") from None
        return self


def _users_file(value: str) -> str:
    try:
        read_users(value)
    except UsersFileError as error:
        raise ValueError(str(error)) from None
    return value


# The users file as a systemd credential, when the config names none (as mqtt_password).
USERS_CREDENTIAL = "console_users"

# Strict (YAML types its numbers: "30" is a mistake to show), but a whole number is a fine float.
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class ConsoleConfig(_Section):
    mqtt: MqttSettings = MqttSettings()
    listen: Annotated[str, AfterValidator(_listen)] = "127.0.0.1:8080"
    database: Annotated[PathSetting, AfterValidator(_database)] = Field(default_factory=_default_database)
    retention_days: Positive = 30.0
    retention_mb: Positive = 1024.0
    # Operator logins for the write actions; without a users file the console is read-only.
    users_file: Annotated[ReadableFile, AfterValidator(_users_file)] | None = None  # else $CREDENTIALS_DIRECTORY/console_users when present
    session_hours: Annotated[float, Field(gt=0, le=24 * 30, allow_inf_nan=False)] = 12.0
    https: HttpsSettings | None = None
    _users_path: str | None = PrivateAttr(default=None)

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    @property
    def users_path(self) -> str | None:
        """The users file in use: the config's, else the systemd credential; None: read-only."""
        return self._users_path

    @model_validator(mode="after")
    def _find_users(self) -> ConsoleConfig:
        self._users_path = self.users_file
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if self.users_file is None and credentials and Path(credentials, USERS_CREDENTIAL).is_file():
            path = str(Path(credentials, USERS_CREDENTIAL))
            try:
                read_users(path)
            except UsersFileError as error:
                raise ValueError(f"users_file (the systemd credential {USERS_CREDENTIAL}): {error}") from None
            self._users_path = path
        return self


# Flags that set a key, and the key they set: a refusal names the flag the value came from.
FLAG_KEYS: dict[str, tuple[str, ...]] = {
    "--mqtt-host": ("mqtt", "host"),
    "--mqtt-port": ("mqtt", "port"),
    "--topic-prefix": ("mqtt", "topic_prefix"),
    "--listen": ("listen",),
    "--database": ("database",),
    "--retention-days": ("retention_days",),
    "--retention-mb": ("retention_mb",),
}


def load_config(path: str | os.PathLike | None, flags: dict[str, object] | None = None) -> ConsoleConfig:
    """The config file (if any) with the flags' values over it; raises ConfigError."""
    flags = {flag: value for flag, value in (flags or {}).items() if value is not None}
    data: dict = {}
    root: yaml.Node | None = None
    where = "command line"
    base: Path | None = None
    if path is not None:
        file = Path(path)
        where, base = str(file), file.parent
        try:
            text = file.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{file}: cannot read config ({getattr(error, 'strerror', None) or error})") from None
        parsed, root = _parse_yaml(file, text)
        if parsed is not None and not isinstance(parsed, dict):
            raise ConfigError(f"{file}: top level (line 1): expected a mapping of settings")
        data = parsed or {}
    from_flag: dict[tuple[str, ...], str] = {}
    for flag, value in flags.items():
        keys = FLAG_KEYS[flag]
        section = data
        for key in keys[:-1]:
            section = section.setdefault(key, {}) if isinstance(section.get(key, {}), dict) else {}
        section[keys[-1]] = value
        from_flag[keys] = flag
    try:
        return ConsoleConfig.model_validate(data, context={"base": base})
    except ValidationError as error:
        raise ConfigError("\n".join(_message(where, root, item, from_flag) for item in error.errors(include_url=False))) from None


def _parse_yaml(path: Path, text: str) -> tuple[object, yaml.Node | None]:
    """The plain data and the node tree its lines are looked up in; a key given twice is refused
    (YAML would keep the second silently)."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _refuse_repeated_keys(path, root, [])
        return loader.construct_document(root), root
    except yaml.YAMLError as error:
        raise ConfigError(yaml_error_line(path, error)) from None
    finally:
        loader.dispose()


def _refuse_repeated_keys(path: Path, node: yaml.Node, keys: list[str]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                raise ConfigError(f"{path}: {'.'.join([*keys, key])} (line {key_node.start_mark.line + 1}): given twice")
            seen.add(key)
            _refuse_repeated_keys(path, value_node, [*keys, key])


def _message(where: str, root: yaml.Node | None, error: ErrorDetails, from_flag: dict[tuple[str, ...], str]) -> str:
    keys = tuple(str(k) for k in error["loc"])
    kind, message = error["type"], error["msg"]
    if kind == "extra_forbidden":
        message = f"unknown key; allowed: {', '.join(sorted(_section_fields(keys[:-1])))}"
    elif kind == "missing":
        message = "required key missing"
    elif kind == "value_error":
        message = str(error["ctx"]["error"])
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        message = "expected a mapping of settings"
    elif isinstance(error.get("input"), (str, int, float, bool)):
        message = f"{message}, got {error['input']!r}"
    dotted = ".".join(keys) or "top level"
    flag = from_flag.get(keys)
    if flag is not None:
        return f"{flag}: {message}"
    line = _line_of(root, keys) if root is not None else None
    return f"{where}: {dotted}{f' (line {line})' if line else ''}: {message}"


_SECTIONS: dict[str, type[BaseModel]] = {"mqtt": MqttSettings, "tls": TlsSettings, "https": HttpsSettings}


def _section_fields(keys: tuple[str, ...]) -> list[str]:
    model: type[BaseModel] = ConsoleConfig
    for key in keys:
        inner = _SECTIONS.get(key)
        if inner is None:
            break
        model = inner
    return list(model.model_fields)


def _line_of(root: yaml.Node, keys: tuple[str, ...]) -> int:
    """The line of the deepest of `keys` found in the file (a missing key: its section's line)."""
    node, line = root, root.start_mark.line + 1
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        pair = next(((k, v) for k, v in node.value if str(k.value) == key), None)
        if pair is None:
            break
        line, node = pair[0].start_mark.line + 1, pair[1]
    return line
