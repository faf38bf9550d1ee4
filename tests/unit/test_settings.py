from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.settings import ServerSettings, SettingsError, setting


@dataclass
class ExampleSettings(ServerSettings):
    """Settings of an example service."""

    max_queue: int = setting(16, "Jobs waiting per model.", min=1, max=1024)
    models: list[str] = setting(["toyworld-sd"], "Models to load at start.")
    device: str = setting("auto", "Compute device.", choices=["auto", "cpu", "cuda"])
    warm_up: bool = setting(True, "Run one request at start.")


def test_defaults_apply_without_env_or_flags():
    settings = ExampleSettings.load([], environ={})
    assert settings.port == 50051
    assert settings.max_queue == 16
    assert settings.models == ["toyworld-sd"]
    assert settings.tls_cert_file is None


def test_env_overrides_defaults_and_flags_override_env():
    environ = {"LUMISERVE_PORT": "6000", "LUMISERVE_MAX_QUEUE": "4", "LUMISERVE_MODELS": "a, b,c"}
    settings = ExampleSettings.load(["--max-queue", "8", "--warm-up", "no"], environ=environ)
    assert settings.port == 6000
    assert settings.max_queue == 8
    assert settings.models == ["a", "b", "c"]
    assert settings.warm_up is False


@pytest.mark.parametrize(
    ("environ", "argv", "message"),
    [
        ({"LUMISERVE_PORT": "abc"}, [], "LUMISERVE_PORT='abc': expected an integer"),
        ({}, ["--port", "70000"], "port (--port / LUMISERVE_PORT)=70000: must be <= 65535"),
        ({}, ["--max-queue", "0"], "must be >= 1"),
        ({"LUMISERVE_DEVICE": "tpu"}, [], "must be one of auto, cpu, cuda"),
        ({"LUMISERVE_LOG_JSON": "maybe"}, [], "expected true or false"),
        ({}, ["--drain-grace-seconds", "soon"], "--drain-grace-seconds='soon': expected a number"),
        ({"LUMISERVE_TLS_CERT_FILE": "/etc/hostname"}, [], "must be set together"),
    ],
)
def test_bad_values_fail_with_a_message_naming_the_setting(environ, argv, message):
    with pytest.raises(SettingsError) as excinfo:
        ExampleSettings.load(argv, environ=environ)
    assert message in str(excinfo.value)


def test_missing_tls_files_are_refused(tmp_path: Path):
    environ = {
        "LUMISERVE_TLS_CERT_FILE": str(tmp_path / "cert.pem"),
        "LUMISERVE_TLS_KEY_FILE": str(tmp_path / "k"),
    }
    with pytest.raises(SettingsError, match="does not exist"):
        ExampleSettings.load([], environ=environ)


def test_help_lists_every_setting_with_its_env_var():
    text = ExampleSettings.argument_parser().format_help()
    for flag, env in [("--max-queue", "LUMISERVE_MAX_QUEUE"), ("--metrics-port", "LUMISERVE_METRICS_PORT")]:
        assert flag in text
        assert env in text


def test_unknown_flag_exits_with_usage_error():
    with pytest.raises(SystemExit) as excinfo:
        ExampleSettings.load(["--no-such-flag", "1"], environ={})
    assert excinfo.value.code == 2
