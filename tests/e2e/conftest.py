"""A real stack of processes on 127.0.0.1: registry (SQLite), model services, gateways."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lumiserve.processes import ServiceProcess
from services.gateway.auth import hash_key

INSTANCE_TOKEN = "e2e-instance-token"
GATEWAY_TOKEN = "e2e-gateway-token"
ADMIN_TOKEN = "e2e-admin-token"
KEYS = {"alice": ("team-a", "[user]"), "bob": ("team-b", "[user]"), "ops": ("ops", "[user, admin]")}


def api_key(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {name}-secret-key"),)


def scrape(process: ServiceProcess) -> str:
    url = f"http://127.0.0.1:{process.metrics_port}/metrics"
    return urllib.request.urlopen(url, timeout=10).read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def wait_until(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class Stack:
    registry: ServiceProcess
    vlm: list[ServiceProcess]
    diffusion: list[ServiceProcess]
    gateway: ServiceProcess
    strict_gateway: ServiceProcess  # tight admission limits
    processes: list[ServiceProcess] = field(default_factory=list)


def _registration_flags(registry: ServiceProcess, name: str) -> list[str]:
    return [
        "--registry-address",
        registry.address,
        "--registry-instance-token",
        INSTANCE_TOKEN,
        "--instance-id",
        name,
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--host",
        "127.0.0.1",
    ]


@pytest.fixture(scope="module")
def stack(tiny_models, tmp_path_factory) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("stack"))
    keys = root / "keys.yaml"
    entries = [
        f"  - {{name: {n}, sha256: {hash_key(f'{n}-secret-key')}, tenant: {t}, roles: {roles}}}"
        for n, (t, roles) in KEYS.items()
    ]
    keys.write_text("keys:\n" + "\n".join(entries) + "\n")
    started: list[ServiceProcess] = []

    def launch(command: str, flags: list[str]) -> ServiceProcess:
        process = ServiceProcess(command, flags, env={"HF_HUB_OFFLINE": "1"}).start()
        started.append(process)
        return process

    try:
        registry = launch(
            "registry",
            [
                "--port",
                "0",
                "--metrics-port",
                "0",
                "--database-url",
                f"sqlite:///{root / 'registry.db'}",
                "--seed-catalog",
                "false",
                "--heartbeat-interval-seconds",
                "0.5",
                "--heartbeat-ttl-seconds",
                "3",
                "--registry-instance-tokens",
                INSTANCE_TOKEN,
                "--registry-gateway-tokens",
                GATEWAY_TOKEN,
                "--registry-admin-tokens",
                ADMIN_TOKEN,
            ],
        ).wait_ready()
        vlm = [
            launch(
                "vlm",
                [
                    *_registration_flags(registry, f"vlm-{i}"),
                    "--models",
                    f"tiny-llava={tiny_models.llava}",
                    "--max-batch-size",
                    "1",
                ],
            )
            for i in range(2)
        ]
        diffusion = [
            launch(
                "diffusion",
                [*_registration_flags(registry, f"diffusion-{i}"), "--models", f"tiny-sd={tiny_models.sd}"],
            )
            for i in range(1)
        ]
        for process in [*vlm, *diffusion]:
            process.wait_ready(timeout=180)
        common = [
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--registry-address",
            registry.address,
            "--registry-token",
            GATEWAY_TOKEN,
            "--api-keys-file",
            str(keys),
        ]
        gateway = launch("gateway", common)
        strict = launch(
            "gateway",
            [
                *common,
                "--tenant-requests-per-second",
                "0.01",
                "--tenant-burst",
                "3",
                "--tenant-max-concurrency",
                "1",
            ],
        )
        gateway.wait_ready(), strict.wait_ready()
        wait_until(
            lambda: all(
                metric(scrape(g), "lumiserve_gateway_backend_replicas", model=model) == count
                for g in (gateway, strict)
                for model, count in (("tiny-llava", 2), ("tiny-sd", 1))
            ),
            what="the gateways to see every replica registered",
        )
        yield Stack(registry, vlm, diffusion, gateway, strict, started)
    finally:
        for process in reversed(started):
            process.stop(timeout=30)
