"""Typed service settings, read from defaults, then `LUMISERVE_*` environment variables, then CLI flags.

Each service declares one dataclass deriving from ServerSettings. A field `max_queue: int` is set by
`LUMISERVE_MAX_QUEUE=8` or `--max-queue 8`; its `setting(...)` metadata gives help text and bounds.
Bad values fail at start with a message naming the variable or flag and what is allowed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

ENV_PREFIX = "LUMISERVE_"


class SettingsError(ValueError):
    """A setting has a bad value. The message names the env var or flag and the allowed values."""


def setting(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: Sequence[str] | None = None,
) -> Any:
    """Declares a settings field with its help text and validation bounds."""
    metadata = {"help": help, "min": min, "max": max, "choices": tuple(choices) if choices else None}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def describe(field_name: str) -> str:
    """How a user sets a field: 'port (--port / LUMISERVE_PORT)'."""
    return f"{field_name} ({flag_name(field_name)} / {env_name(field_name)})"


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(type, optional) of a field annotation such as `int`, `Path | None` or `list[str]`."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return _base_type(inner[0])[0], True
    return (typing.get_origin(annotation) or annotation), False


def _parse(raw: str, kind: type, source: str) -> Any:
    text = raw.strip()
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is list:
            return [item.strip() for item in text.split(",") if item.strip()]
        return kind(text)
    except ValueError:
        expected = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, kind.__name__)
        raise SettingsError(f"{source}={raw!r}: expected {expected}") from None


def parse_field(cls: type, name: str, raw: str, source: str) -> Any:
    """`raw` as the type of dataclass `cls`'s field `name`, parsed as settings are (SettingsError
    naming `source` when it does not parse)."""
    return _parse(raw, _base_type(typing.get_type_hints(cls)[name])[0], source)


def split_model_entry(entry: str) -> tuple[str, str, list[str]]:
    """`ID=SOURCE;key=value;...` (or `SOURCE`, whose last path part becomes the id) into the id, the
    source and the non-empty options, all stripped; the services parse the options."""
    head, *options = [part.strip() for part in entry.split(";")]
    model_id, sep, source = head.partition("=")
    if not sep:
        model_id, source = head.rstrip("/").rsplit("/", 1)[-1], head
    return model_id.strip(), source.strip(), [option for option in options if option]


@dataclasses.dataclass
class ServerSettings:
    """Settings every gRPC service has. Services derive their own settings class from this one."""

    host: str = setting("127.0.0.1", "Address to listen on (0.0.0.0 in containers).")
    port: int = setting(50051, "gRPC port; 0 picks a free one.", min=0, max=65535)
    metrics_port: int = setting(
        9090, "Prometheus /metrics HTTP port; 0 picks a free one, -1 disables.", min=-1, max=65535
    )
    max_message_bytes: int = setting(
        64 * 1024 * 1024, "Largest gRPC message accepted or sent.", min=1024, max=2**31 - 1
    )
    keepalive_seconds: float = setting(30.0, "Interval of HTTP/2 keepalive pings to clients.", min=1)
    keepalive_timeout_seconds: float = setting(10.0, "Time to wait for a keepalive ack.", min=1)
    drain_grace_seconds: float = setting(30.0, "On SIGTERM: time in-flight calls get to finish.", min=0)
    tls_cert_file: Path | None = setting(None, "PEM certificate: serve TLS when set (with tls_key_file).")
    tls_key_file: Path | None = setting(None, "PEM private key for tls_cert_file.")
    ready_file: Path | None = setting(
        None, "Once serving, write {port, metrics_port, pid} as JSON here (for launchers and tests)."
    )
    log_level: str = setting("INFO", "Log level.", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    log_json: bool = setting(False, "Write logs as JSON lines.")

    def validate(self) -> None:
        """Cross-field checks; subclasses extend it (call super)."""
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise SettingsError(
                f"{describe('tls_cert_file')} and {describe('tls_key_file')} must be set together"
            )
        for path in (self.tls_cert_file, self.tls_key_file):
            if path is not None and not path.is_file():
                raise SettingsError(f"TLS file {path} does not exist")

    @classmethod
    def load(cls, argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> Self:
        """Defaults, overridden by LUMISERVE_* variables, overridden by flags; then validated."""
        environ = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if env_name(field.name) in environ:
                values[field.name] = _parse(
                    environ[env_name(field.name)], _base_type(hints[field.name])[0], env_name(field.name)
                )
        flags = cls.argument_parser().parse_args(list(argv))
        for field in dataclasses.fields(cls):
            raw = getattr(flags, field.name)
            if raw is not None:
                values[field.name] = _parse(raw, _base_type(hints[field.name])[0], flag_name(field.name))
        settings = cls(**values)
        settings._check_bounds()
        settings.validate()
        return settings

    @classmethod
    def argument_parser(cls) -> argparse.ArgumentParser:
        """One flag per field; `--help` lists each with its env var and default."""
        parser = argparse.ArgumentParser(description=cls.__doc__, exit_on_error=True)
        for field in dataclasses.fields(cls):
            meta = field.metadata
            default = field.default_factory() if callable(field.default_factory) else field.default
            parser.add_argument(
                flag_name(field.name),
                dest=field.name,
                default=None,
                metavar=field.name.upper(),
                help=f"{meta.get('help', '')} [env {env_name(field.name)}, default {default!r}]",
            )
        return parser

    def _check_bounds(self) -> None:
        for field in dataclasses.fields(self):
            value, meta = getattr(self, field.name), field.metadata
            if value is None:
                continue
            if meta.get("min") is not None and value < meta["min"]:
                raise SettingsError(f"{describe(field.name)}={value}: must be >= {meta['min']}")
            if meta.get("max") is not None and value > meta["max"]:
                raise SettingsError(f"{describe(field.name)}={value}: must be <= {meta['max']}")
            if meta.get("choices") and value not in meta["choices"]:
                choices = ", ".join(meta["choices"])
                raise SettingsError(f"{describe(field.name)}={value!r}: must be one of {choices}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
