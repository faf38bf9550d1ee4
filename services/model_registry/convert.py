"""Protobuf <-> registry records. Enum values become lower-case names without their prefix
(MODEL_FAMILY_VISION_LANGUAGE <-> "vision_language"); 0 (UNSPECIFIED) <-> ""."""

from __future__ import annotations

from google.protobuf import timestamp_pb2
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from lumiserve.common.v1 import common_pb2
from lumiserve.model_registry.v1 import model_registry_pb2 as pb
from services.common.errors import InvalidArgument
from services.model_registry.records import (
    Artifact,
    Change,
    Hardware,
    Instance,
    Load,
    LoadedModelRef,
    ModelRecord,
    Variant,
)

_PREFIXES = {
    common_pb2.ModelFamily: "MODEL_FAMILY_",
    common_pb2.Precision: "PRECISION_",
    common_pb2.Backend: "BACKEND_",
    common_pb2.Accelerator: "ACCELERATOR_",
    pb.InstanceState: "INSTANCE_STATE_",
    pb.ChangeType: "CHANGE_TYPE_",
}


def enum_name(enum: EnumTypeWrapper, value: int, field: str) -> str:
    if value == 0:
        return ""
    try:
        return enum.Name(value).removeprefix(_PREFIXES[enum]).lower()
    except ValueError:
        names = ", ".join(n for n in enum.keys() if not n.endswith("_UNSPECIFIED"))  # noqa: SIM118 (not iterable)
        raise InvalidArgument(field, f"unknown value {value}; use one of {names}") from None


def enum_value(enum: EnumTypeWrapper, name: str) -> int:
    return enum.Value(_PREFIXES[enum] + name.upper()) if name else 0


def _timestamp(micros: int) -> timestamp_pb2.Timestamp | None:
    if not micros:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMicroseconds(micros)
    return stamp


# ----- models


def variant_from_pb(message: pb.Variant, field: str) -> Variant:
    return Variant(
        name=message.name,
        size=message.size,
        parameter_count=message.parameter_count,
        precision=enum_name(common_pb2.Precision, message.precision, f"{field}.precision"),
        backend=enum_name(common_pb2.Backend, message.backend, f"{field}.backend"),
        context_window=message.context_window,
        memory_bytes=message.memory_bytes,
        hardware_targets=list(message.hardware_targets),
        source=message.source,
    )


def variant_to_pb(variant: Variant) -> pb.Variant:
    return pb.Variant(
        name=variant.name,
        size=variant.size,
        parameter_count=variant.parameter_count,
        precision=enum_value(common_pb2.Precision, variant.precision),
        backend=enum_value(common_pb2.Backend, variant.backend),
        context_window=variant.context_window,
        memory_bytes=variant.memory_bytes,
        hardware_targets=variant.hardware_targets,
        source=variant.source,
    )


def model_from_pb(message: pb.Model, field: str = "model") -> ModelRecord:
    return ModelRecord(
        id=message.id,
        family=enum_name(common_pb2.ModelFamily, message.family, f"{field}.family"),
        source=message.source,
        revision=message.revision,
        tasks=list(message.tasks),
        default_variant=message.default_variant,
        variants=[variant_from_pb(v, f"{field}.variants[{i}]") for i, v in enumerate(message.variants)],
        description=message.description,
        labels=dict(message.labels),
    )


def model_to_pb(model: ModelRecord) -> pb.Model:
    return pb.Model(
        id=model.id,
        family=enum_value(common_pb2.ModelFamily, model.family),
        source=model.source,
        revision=model.revision,
        tasks=model.tasks,
        default_variant=model.default_variant,
        variants=[variant_to_pb(v) for v in model.variants],
        description=model.description,
        labels=model.labels,
        create_time=_timestamp(model.create_time),
        update_time=_timestamp(model.update_time),
    )


# ----- artifacts


def artifact_from_pb(message: pb.Artifact, field: str = "artifact") -> Artifact:
    return Artifact(
        id=message.id,
        model_id=message.model_id,
        variant=message.variant,
        backend=enum_name(common_pb2.Backend, message.backend, f"{field}.backend"),
        gpu_arch=message.gpu_arch,
        shape_profile=message.shape_profile,
        size_bytes=message.size_bytes,
        checksum=message.checksum,
        uri=message.uri,
    )


def artifact_to_pb(artifact: Artifact) -> pb.Artifact:
    return pb.Artifact(
        id=artifact.id,
        model_id=artifact.model_id,
        variant=artifact.variant,
        backend=enum_value(common_pb2.Backend, artifact.backend),
        gpu_arch=artifact.gpu_arch,
        shape_profile=artifact.shape_profile,
        size_bytes=artifact.size_bytes,
        checksum=artifact.checksum,
        uri=artifact.uri,
        create_time=_timestamp(artifact.create_time),
    )


# ----- instances


def load_from_pb(message: pb.InstanceLoad) -> Load:
    return Load(
        queue_depth=message.queue_depth,
        in_flight=message.in_flight,
        memory_used_bytes=message.memory_used_bytes,
        queue_depth_by_model=dict(message.queue_depth_by_model),
    )


def load_to_pb(load: Load) -> pb.InstanceLoad:
    return pb.InstanceLoad(
        queue_depth=load.queue_depth,
        in_flight=load.in_flight,
        memory_used_bytes=load.memory_used_bytes,
        queue_depth_by_model=load.queue_depth_by_model,
    )


def refs_from_pb(messages: list[pb.LoadedModelRef]) -> list[LoadedModelRef]:
    return [LoadedModelRef(m.model_id, m.variant) for m in messages]


def instance_state(value: int, field: str) -> str:
    return enum_name(pb.InstanceState, value, field)


def instance_from_pb(message: pb.Instance, field: str = "instance") -> Instance:
    hardware = message.hardware
    return Instance(
        id=message.id,
        endpoint=message.endpoint,
        hardware=Hardware(
            type=hardware.type,
            accelerator=enum_name(
                common_pb2.Accelerator, hardware.accelerator, f"{field}.hardware.accelerator"
            ),
            arch=hardware.arch,
            device_count=hardware.device_count,
            device_memory_bytes=hardware.device_memory_bytes,
        ),
        families=[
            enum_name(common_pb2.ModelFamily, f, f"{field}.families[{i}]")
            for i, f in enumerate(message.families)
        ],
        loaded_models=refs_from_pb(list(message.loaded_models)),
        capacity=message.capacity,
        load=load_from_pb(message.load),
        state=instance_state(message.state, f"{field}.state"),
        labels=dict(message.labels),
        version=message.version,
    )


def instance_to_pb(instance: Instance) -> pb.Instance:
    hardware = instance.hardware
    return pb.Instance(
        id=instance.id,
        endpoint=instance.endpoint,
        hardware=common_pb2.Hardware(
            type=hardware.type,
            accelerator=enum_value(common_pb2.Accelerator, hardware.accelerator),
            arch=hardware.arch,
            device_count=hardware.device_count,
            device_memory_bytes=hardware.device_memory_bytes,
        ),
        families=[enum_value(common_pb2.ModelFamily, f) for f in instance.families],
        loaded_models=[
            pb.LoadedModelRef(model_id=r.model_id, variant=r.variant) for r in instance.loaded_models
        ],
        capacity=instance.capacity,
        load=load_to_pb(instance.load),
        state=enum_value(pb.InstanceState, instance.state),
        register_time=_timestamp(instance.register_time),
        heartbeat_time=_timestamp(instance.heartbeat_time),
        labels=instance.labels,
        version=instance.version,
    )


# ----- watch


def change_to_pb(change: Change) -> pb.WatchResponse:
    response = pb.WatchResponse(
        revision=change.revision, change_type=enum_value(pb.ChangeType, change.change_type)
    )
    record = change.record
    if isinstance(record, ModelRecord):
        response.model.CopyFrom(model_to_pb(record))
    elif isinstance(record, Artifact):
        response.artifact.CopyFrom(artifact_to_pb(record))
    elif isinstance(record, Instance):
        response.instance.CopyFrom(instance_to_pb(record))
    return response
