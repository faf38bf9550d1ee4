"""`lumiserve up`: the whole stack on this machine — registry (SQLite), diffusion, vision-language and
gateway as child processes on localhost, started in health-gated order, stopped (drained) by one
Ctrl-C or SIGTERM. With no models configured it serves the toy-world pair committed in models/.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lumiserve.processes import ServiceProcess, ServiceStartError
from lumiserve.toyworld.evaluate import DEFAULT_GUIDANCE, DEFAULT_STEPS

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
# The toy-world diffusion model's card settings (its own scheduler is the card's DPM++ 2M).
DEFAULT_DIFFUSION_MODELS = [
    f"toyworld-sd={MODELS_DIR / 'toyworld-sd'};steps={DEFAULT_STEPS};guidance_scale={DEFAULT_GUIDANCE:g}"
]
DEFAULT_VLM_MODELS = [f"toyworld-llava={MODELS_DIR / 'toyworld-llava'};family=toyworld"]
READY_FILE = "up.json"  # in the data folder while the stack serves: the addresses


@dataclass
class StackConfig:
    data_dir: Path = Path(".lumiserve")
    gateway_port: int = 50050
    diffusion_models: list[str] = field(default_factory=lambda: list(DEFAULT_DIFFUSION_MODELS))
    vlm_models: list[str] = field(default_factory=lambda: list(DEFAULT_VLM_MODELS))
    start_timeout: float = 300.0


class Stack:
    """The child processes of one `lumiserve up`."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.data_dir = config.data_dir.resolve()
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        instance_token, gateway_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)

        # Gateway port 0: every service on a free port (tests; several stacks on one machine).
        ports = ["--port", "0", "--metrics-port", "0"] if config.gateway_port == 0 else []

        def service(command: str, *flags: str, env: dict[str, str] | None = None) -> ServiceProcess:
            return ServiceProcess(
                command,
                ["--host", "127.0.0.1", *ports, *flags],
                env=env or {},
                log_path=logs / f"{command}.log",
            )

        self.registry = service(
            "registry",
            "--database-url",
            f"sqlite:///{self.data_dir / 'registry.db'}",
            env={
                "LUMISERVE_REGISTRY_INSTANCE_TOKENS": instance_token,
                "LUMISERVE_REGISTRY_GATEWAY_TOKENS": gateway_token,
            },
        )
        registering = {"LUMISERVE_REGISTRY_INSTANCE_TOKEN": instance_token}
        # The two model services share the machine: torch's default (all cores each) oversubscribes it,
        # and a preempted OpenMP thread can stall every step (measured: 0.1 s runs taking 30 s).
        threads = str(max(1, (os.cpu_count() or 2) // 2))
        self.models = [
            service(
                "diffusion",
                "--models",
                ",".join(config.diffusion_models),
                "--num-threads",
                threads,
                env=registering,
            ),
            service(
                "vlm", "--models", ",".join(config.vlm_models), "--torch-threads", threads, env=registering
            ),
        ]
        # One local user: admission limits sized for scripts, not for sharing among tenants.
        local_limits = [
            "--tenant-requests-per-second",
            "1000",
            "--tenant-burst",
            "2000",
            "--tenant-max-concurrency",
            "64",
        ]
        self.gateway = service(
            "gateway",
            "--port",
            str(config.gateway_port),
            "--auth-disabled",
            "true",
            *local_limits,
            env={"LUMISERVE_REGISTRY_TOKEN": gateway_token},
        )

    @property
    def processes(self) -> list[ServiceProcess]:
        return [self.gateway, *self.models, self.registry]

    def start(self) -> None:
        """Registry first, then the model services (in parallel), then the gateway once they registered."""
        timeout = self.config.start_timeout
        self.registry.start().wait_ready(timeout)
        registry_flags = ["--registry-address", self.registry.address]
        for process in self.models:
            process.flags += registry_flags
            process.start()
        for process in self.models:
            process.wait_ready(timeout)
        self.gateway.flags += registry_flags
        self.gateway.start().wait_ready(timeout)
        self._wait_for_routes(timeout)
        (self.data_dir / READY_FILE).write_text(json.dumps(self.addresses()))

    def _wait_for_routes(self, timeout: float) -> None:
        """The gateway routes once the registry's Watch told it about both model services."""
        from lumiserve.client import Client
        from lumiserve.common.v1.common_pb2 import MODEL_FAMILY_DIFFUSION, MODEL_FAMILY_VISION_LANGUAGE
        from lumiserve.model_registry.v1.model_registry_pb2 import INSTANCE_STATE_SERVING

        wanted = {MODEL_FAMILY_DIFFUSION, MODEL_FAMILY_VISION_LANGUAGE}
        deadline = time.monotonic() + timeout
        with Client(self.gateway.address, timeout=5) as client:
            while time.monotonic() < deadline:
                instances = client.list_instances()
                if wanted <= {f for i in instances if i.state == INSTANCE_STATE_SERVING for f in i.families}:
                    return
                time.sleep(0.2)
        raise ServiceStartError("the model services did not register with the registry in time")

    def addresses(self) -> dict[str, str]:
        return {
            "gateway": self.gateway.address,
            "registry": self.registry.address,
            "diffusion": self.models[0].address,
            "vlm": self.models[1].address,
            "logs": str(self.data_dir / "logs"),
        }

    def exited(self) -> ServiceProcess | None:
        return next(
            (p for p in self.processes if p.process is not None and p.process.poll() is not None), None
        )

    def stop(self) -> None:
        """Gateway first (no new work), then the model services (drain), then the registry."""
        (self.data_dir / READY_FILE).unlink(missing_ok=True)
        self.gateway.stop()
        threads = [threading.Thread(target=p.stop) for p in self.models]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.registry.stop()


def run(config: StackConfig, announce=print) -> int:
    """Starts the stack and serves until Ctrl-C / SIGTERM or until a service dies. Exit status."""
    stack = Stack(config)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    status = 0
    try:
        stack.start()
        announce(stack.addresses())
        while not stop.wait(0.5):
            dead = stack.exited()
            if dead is not None:
                code = dead.process.returncode
                announce(f"{dead.command} exited with status {code}; stopping the stack\n{dead.log_tail()}")
                status = 1
                break
    except ServiceStartError as error:
        announce(str(error))
        status = 1
    finally:
        stack.stop()
    return status
