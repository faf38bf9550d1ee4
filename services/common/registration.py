"""Keeps a service instance registered with the model registry.

    registration = Registration(
        settings.registry_address, instance, token=settings.instance_token(),
        load=lambda: LoadReport(queue_depth=queue.depth, in_flight=queue.running),
        loaded_models=lambda: [(m.name, m.variant) for m in cache.ready()],
    )
    await registration.start()      # returns at once; registers in the background
    ...
    await registration.stop()       # on drain: deregister (best effort)

It registers (endpoint, hardware, families, loaded models, capacity), then heartbeats every interval the
registry asks for with the load the callback reports and the current loaded models. When the registry
has forgotten the instance (NOT_FOUND: its database was reset, or the instance was marked down and
purged) it registers again. The registry being down is never fatal: failures are logged (once per
outage) and retried with backoff while the service keeps serving. Calls carry the instance token as
`authorization: Bearer <token>` (the registry's `registry_instance_tokens`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from lumiserve.model_registry.v1 import model_registry_pb2 as pb
from lumiserve.model_registry.v1 import model_registry_pb2_grpc as pb_grpc
from services.common.server import run_until_signal
from services.common.settings import setting

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    queue_depth: int = 0
    in_flight: int = 0
    memory_used_bytes: int = 0
    queue_depth_by_model: dict[str, int] = field(default_factory=dict)

    def to_pb(self) -> pb.InstanceLoad:
        return pb.InstanceLoad(
            queue_depth=self.queue_depth,
            in_flight=self.in_flight,
            memory_used_bytes=self.memory_used_bytes,
            queue_depth_by_model=self.queue_depth_by_model,
        )


LoadCallback = Callable[[], LoadReport | Awaitable[LoadReport]]
LoadedModelsCallback = Callable[[], Sequence[tuple[str, str]]]


@dataclass
class RegistrationSettings:
    """Settings of a service that registers itself:
    `class MySettings(RegistrationSettings, ServerSettings)`."""

    registry_address: str = setting("", "host:port of the model registry; empty = do not register.")
    registry_instance_token: str = setting("", "Token the registry accepts for instance registration.")
    registry_instance_token_file: Path | None = setting(None, "File holding the instance token.")
    instance_id: str = setting("", "This instance's id in the registry; empty = <hostname>-<port>.")
    advertise_address: str = setting(
        "", "host:port the gateway dials to reach this instance; empty = the listen address."
    )
    hardware_type: str = setting(
        "cpu",
        "Hardware type of this instance (cpu, nvidia-l4, nvidia-h100, amd-mi300, ...).",
    )
    hardware_arch: str = setting("", "Compute architecture keying compiled artifacts (sm_90, gfx942, ...).")

    def instance_token(self) -> str:
        if self.registry_instance_token_file is not None:
            return self.registry_instance_token_file.read_text().strip()
        return self.registry_instance_token


def advertised_endpoint(listen_host: str, port: int, advertise: str = "") -> str:
    """The endpoint to register: `advertise` if set, else the listen address, with the host name in
    place of a wildcard address (0.0.0.0 / ::) that nobody can dial."""
    if advertise:
        return advertise
    host = socket.gethostname() if listen_host in ("0.0.0.0", "::", "[::]", "") else listen_host
    return f"{host}:{port}"


def default_instance_id(port: int) -> str:
    return f"{socket.gethostname()}-{port}"


class Registration:
    def __init__(
        self,
        address: str,
        instance: pb.Instance,
        *,
        token: str,
        load: LoadCallback | None = None,
        loaded_models: LoadedModelsCallback | None = None,
        heartbeat_interval: float | None = None,
        retry_initial_seconds: float = 0.5,
        retry_max_seconds: float = 30.0,
        rpc_timeout: float = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.address = address
        self.instance = instance
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._load = load
        self._loaded_models = loaded_models
        self._interval_override = heartbeat_interval
        self.heartbeat_interval = heartbeat_interval or 5.0
        self._retry_initial = retry_initial_seconds
        self._retry_max = retry_max_seconds
        self._rpc_timeout = rpc_timeout
        self._credentials = credentials
        self._state = instance.state or pb.INSTANCE_STATE_SERVING
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.ModelRegistryServiceStub | None = None
        self._task: asyncio.Task[None] | None = None
        self.registered = asyncio.Event()
        self.registrations = 0  # how many times it registered (re-registrations included)
        self.heartbeats = 0

    async def start(self) -> None:
        """Starts registering and heartbeating in the background; never raises for the registry."""
        if self._credentials is not None:
            self._channel = grpc.aio.secure_channel(self.address, self._credentials)
        else:
            self._channel = grpc.aio.insecure_channel(self.address)
        self._stub = pb_grpc.ModelRegistryServiceStub(self._channel)
        self._task = asyncio.create_task(self._run(), name="registry-registration")

    def set_state(self, state: int) -> None:
        """Reported with the next heartbeat (e.g. INSTANCE_STATE_DRAINING when a drain starts)."""
        self._state = state

    async def stop(self, deregister: bool = True) -> None:
        """Stops heartbeating and, when registered, deregisters (best effort: the TTL covers failures)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if deregister and self.registered.is_set() and self._stub is not None:
            try:
                await self._stub.DeregisterInstance(
                    pb.DeregisterInstanceRequest(instance_id=self.instance.id),
                    metadata=self._metadata,
                    timeout=self._rpc_timeout,
                )
                log.info("deregistered %s from the registry at %s", self.instance.id, self.address)
            except grpc.aio.AioRpcError as error:
                log.warning("could not deregister: %s %s", error.code().name, error.details())
            self.registered.clear()
        if self._channel is not None:
            await self._channel.close()

    async def _current_load(self) -> pb.InstanceLoad:
        if self._load is None:
            return pb.InstanceLoad()
        report = self._load()
        if inspect.isawaitable(report):
            report = await report
        return report.to_pb()

    def _current_models(self) -> list[pb.LoadedModelRef]:
        if self._loaded_models is None:
            return list(self.instance.loaded_models)
        return [pb.LoadedModelRef(model_id=m, variant=v) for m, v in self._loaded_models()]

    async def _register(self) -> None:
        assert self._stub is not None
        instance = pb.Instance()
        instance.CopyFrom(self.instance)
        instance.state = self._state
        instance.load.CopyFrom(await self._current_load())
        del instance.loaded_models[:]
        instance.loaded_models.extend(self._current_models())
        response = await self._stub.RegisterInstance(
            pb.RegisterInstanceRequest(instance=instance), metadata=self._metadata, timeout=self._rpc_timeout
        )
        if self._interval_override is None and response.heartbeat_interval_seconds:
            self.heartbeat_interval = float(response.heartbeat_interval_seconds)
        self.registrations += 1
        self.registered.set()
        log.info(
            "registered %s (%s) with the registry at %s; heartbeat every %.1f s",
            self.instance.id,
            self.instance.endpoint,
            self.address,
            self.heartbeat_interval,
        )

    async def _heartbeat(self) -> None:
        assert self._stub is not None
        await self._stub.Heartbeat(
            pb.HeartbeatRequest(
                instance_id=self.instance.id,
                load=await self._current_load(),
                loaded_models=self._current_models(),
                state=self._state,
            ),
            metadata=self._metadata,
            timeout=self._rpc_timeout,
        )
        self.heartbeats += 1

    async def _run(self) -> None:
        delay = self._retry_initial
        failing = False
        while True:
            try:
                if self.registered.is_set():
                    await self._heartbeat()
                else:
                    await self._register()
                if failing:
                    log.info("registry at %s reachable again", self.address)
                failing, delay = False, self._retry_initial
                await asyncio.sleep(self.heartbeat_interval)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND and self.registered.is_set():
                    log.info("the registry forgot %s; registering again", self.instance.id)
                    self.registered.clear()
                    continue
                if not failing:
                    log.warning(
                        "registry at %s: %s %s; retrying (the service keeps serving)",
                        self.address,
                        error.code().name,
                        error.details(),
                    )
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in a callback must not stop the heartbeats for good
                log.exception("registration loop error; retrying")
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)


def instance_registration(
    settings: RegistrationSettings,
    port: int,
    families: Sequence[int],
    load_snapshot: Callable[[], dict],
    capacity: int,
) -> Registration | None:
    """The Registration of a model service from its settings and its data plane's `load_snapshot()`
    ({"queue_depth": {model: n}, "in_flight": n, "loaded_models": [ids], "memory_used_bytes": n}).
    None when no registry is configured."""
    from lumiserve.common.v1 import common_pb2

    if not settings.registry_address:
        return None
    host = getattr(settings, "host", "127.0.0.1")
    instance = pb.Instance(
        id=settings.instance_id or default_instance_id(port),
        endpoint=advertised_endpoint(host, port, settings.advertise_address),
        hardware=common_pb2.Hardware(type=settings.hardware_type, arch=settings.hardware_arch),
        families=list(families),
        capacity=capacity,
        state=pb.INSTANCE_STATE_SERVING,
    )

    def load() -> LoadReport:
        snapshot = load_snapshot()
        by_model = dict(snapshot.get("queue_depth", {}))
        return LoadReport(
            queue_depth=sum(by_model.values()),
            in_flight=int(snapshot.get("in_flight", 0)),
            memory_used_bytes=int(snapshot.get("memory_used_bytes", 0)),
            queue_depth_by_model=by_model,
        )

    return Registration(
        settings.registry_address,
        instance,
        token=settings.instance_token(),
        load=load,
        loaded_models=lambda: [(model, "") for model in load_snapshot().get("loaded_models", [])],
    )


def registration_hooks(
    settings: RegistrationSettings,
    port: Callable[[], int],
    families: Sequence[int],
    load_snapshot: Callable[[], dict],
    capacity: int,
) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """(after_serving, before_drain) for run_until_signal: register once serving, deregister before
    draining so that the gateway stops routing here first. No-ops without a registry address."""
    holder: list[Registration] = []

    async def register() -> None:
        registration = instance_registration(settings, port(), families, load_snapshot, capacity)
        if registration is not None:
            holder.append(registration)
            await registration.start()

    async def deregister() -> None:
        for registration in holder:
            registration.set_state(pb.INSTANCE_STATE_DRAINING)
            await registration.stop()

    return register, deregister


async def run_model_service(host, plane, settings: RegistrationSettings, family: int, capacity: int) -> int:
    """Runs a model service process: `plane.start()` (load models) while NOT_SERVING, register with the
    registry once serving, deregister before draining, `plane.stop()` after."""
    register, deregister = registration_hooks(
        settings, lambda: host.port, [family], plane.load_snapshot, capacity
    )
    return await run_until_signal(
        host, plane.start, plane.stop, after_serving=register, before_drain=deregister
    )
