import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from lumiserve.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InstanceState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSTANCE_STATE_UNSPECIFIED: _ClassVar[InstanceState]
    INSTANCE_STATE_STARTING: _ClassVar[InstanceState]
    INSTANCE_STATE_SERVING: _ClassVar[InstanceState]
    INSTANCE_STATE_DRAINING: _ClassVar[InstanceState]
    INSTANCE_STATE_DOWN: _ClassVar[InstanceState]

class ChangeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_TYPE_UNSPECIFIED: _ClassVar[ChangeType]
    CHANGE_TYPE_CREATED: _ClassVar[ChangeType]
    CHANGE_TYPE_UPDATED: _ClassVar[ChangeType]
    CHANGE_TYPE_DELETED: _ClassVar[ChangeType]
    CHANGE_TYPE_SYNCED: _ClassVar[ChangeType]
INSTANCE_STATE_UNSPECIFIED: InstanceState
INSTANCE_STATE_STARTING: InstanceState
INSTANCE_STATE_SERVING: InstanceState
INSTANCE_STATE_DRAINING: InstanceState
INSTANCE_STATE_DOWN: InstanceState
CHANGE_TYPE_UNSPECIFIED: ChangeType
CHANGE_TYPE_CREATED: ChangeType
CHANGE_TYPE_UPDATED: ChangeType
CHANGE_TYPE_DELETED: ChangeType
CHANGE_TYPE_SYNCED: ChangeType

class Variant(_message.Message):
    __slots__ = ("name", "size", "parameter_count", "precision", "backend", "context_window", "memory_bytes", "hardware_targets", "source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_TARGETS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: str
    parameter_count: int
    precision: _common_pb2.Precision
    backend: _common_pb2.Backend
    context_window: int
    memory_bytes: int
    hardware_targets: _containers.RepeatedScalarFieldContainer[str]
    source: str
    def __init__(self, name: _Optional[str] = ..., size: _Optional[str] = ..., parameter_count: _Optional[int] = ..., precision: _Optional[_Union[_common_pb2.Precision, str]] = ..., backend: _Optional[_Union[_common_pb2.Backend, str]] = ..., context_window: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., hardware_targets: _Optional[_Iterable[str]] = ..., source: _Optional[str] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("id", "family", "source", "revision", "tasks", "default_variant", "variants", "description", "labels", "create_time", "update_time")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VARIANT_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    family: _common_pb2.ModelFamily
    source: str
    revision: str
    tasks: _containers.RepeatedScalarFieldContainer[str]
    default_variant: str
    variants: _containers.RepeatedCompositeFieldContainer[Variant]
    description: str
    labels: _containers.ScalarMap[str, str]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., family: _Optional[_Union[_common_pb2.ModelFamily, str]] = ..., source: _Optional[str] = ..., revision: _Optional[str] = ..., tasks: _Optional[_Iterable[str]] = ..., default_variant: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[Variant, _Mapping]]] = ..., description: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class CreateModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("pagination", "family", "task", "hardware_type")
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_TYPE_FIELD_NUMBER: _ClassVar[int]
    pagination: _common_pb2.Pagination
    family: _common_pb2.ModelFamily
    task: str
    hardware_type: str
    def __init__(self, pagination: _Optional[_Union[_common_pb2.Pagination, _Mapping]] = ..., family: _Optional[_Union[_common_pb2.ModelFamily, str]] = ..., task: _Optional[str] = ..., hardware_type: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "page_info")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    PAGE_INFO_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    page_info: _common_pb2.PageInfo
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., page_info: _Optional[_Union[_common_pb2.PageInfo, _Mapping]] = ...) -> None: ...

class UpdateModelRequest(_message.Message):
    __slots__ = ("model", "update_mask")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    model: Model
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("id", "model_id", "variant", "backend", "gpu_arch", "shape_profile", "size_bytes", "checksum", "uri", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    GPU_ARCH_FIELD_NUMBER: _ClassVar[int]
    SHAPE_PROFILE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    model_id: str
    variant: str
    backend: _common_pb2.Backend
    gpu_arch: str
    shape_profile: str
    size_bytes: int
    checksum: str
    uri: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., model_id: _Optional[str] = ..., variant: _Optional[str] = ..., backend: _Optional[_Union[_common_pb2.Backend, str]] = ..., gpu_arch: _Optional[str] = ..., shape_profile: _Optional[str] = ..., size_bytes: _Optional[int] = ..., checksum: _Optional[str] = ..., uri: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateArtifactRequest(_message.Message):
    __slots__ = ("artifact",)
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    artifact: Artifact
    def __init__(self, artifact: _Optional[_Union[Artifact, _Mapping]] = ...) -> None: ...

class CreateArtifactResponse(_message.Message):
    __slots__ = ("artifact",)
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    artifact: Artifact
    def __init__(self, artifact: _Optional[_Union[Artifact, _Mapping]] = ...) -> None: ...

class ListArtifactsRequest(_message.Message):
    __slots__ = ("pagination", "model_id", "variant", "backend", "gpu_arch", "shape_profile")
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    GPU_ARCH_FIELD_NUMBER: _ClassVar[int]
    SHAPE_PROFILE_FIELD_NUMBER: _ClassVar[int]
    pagination: _common_pb2.Pagination
    model_id: str
    variant: str
    backend: _common_pb2.Backend
    gpu_arch: str
    shape_profile: str
    def __init__(self, pagination: _Optional[_Union[_common_pb2.Pagination, _Mapping]] = ..., model_id: _Optional[str] = ..., variant: _Optional[str] = ..., backend: _Optional[_Union[_common_pb2.Backend, str]] = ..., gpu_arch: _Optional[str] = ..., shape_profile: _Optional[str] = ...) -> None: ...

class ListArtifactsResponse(_message.Message):
    __slots__ = ("artifacts", "page_info")
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    PAGE_INFO_FIELD_NUMBER: _ClassVar[int]
    artifacts: _containers.RepeatedCompositeFieldContainer[Artifact]
    page_info: _common_pb2.PageInfo
    def __init__(self, artifacts: _Optional[_Iterable[_Union[Artifact, _Mapping]]] = ..., page_info: _Optional[_Union[_common_pb2.PageInfo, _Mapping]] = ...) -> None: ...

class DeleteArtifactRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteArtifactResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InstanceLoad(_message.Message):
    __slots__ = ("queue_depth", "in_flight", "memory_used_bytes", "queue_depth_by_model")
    class QueueDepthByModelEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_BY_MODEL_FIELD_NUMBER: _ClassVar[int]
    queue_depth: int
    in_flight: int
    memory_used_bytes: int
    queue_depth_by_model: _containers.ScalarMap[str, int]
    def __init__(self, queue_depth: _Optional[int] = ..., in_flight: _Optional[int] = ..., memory_used_bytes: _Optional[int] = ..., queue_depth_by_model: _Optional[_Mapping[str, int]] = ...) -> None: ...

class LoadedModelRef(_message.Message):
    __slots__ = ("model_id", "variant")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    variant: str
    def __init__(self, model_id: _Optional[str] = ..., variant: _Optional[str] = ...) -> None: ...

class Instance(_message.Message):
    __slots__ = ("id", "endpoint", "hardware", "families", "loaded_models", "capacity", "load", "state", "register_time", "heartbeat_time", "labels", "version")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    FAMILIES_FIELD_NUMBER: _ClassVar[int]
    LOADED_MODELS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REGISTER_TIME_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    endpoint: str
    hardware: _common_pb2.Hardware
    families: _containers.RepeatedScalarFieldContainer[_common_pb2.ModelFamily]
    loaded_models: _containers.RepeatedCompositeFieldContainer[LoadedModelRef]
    capacity: int
    load: InstanceLoad
    state: InstanceState
    register_time: _timestamp_pb2.Timestamp
    heartbeat_time: _timestamp_pb2.Timestamp
    labels: _containers.ScalarMap[str, str]
    version: str
    def __init__(self, id: _Optional[str] = ..., endpoint: _Optional[str] = ..., hardware: _Optional[_Union[_common_pb2.Hardware, _Mapping]] = ..., families: _Optional[_Iterable[_Union[_common_pb2.ModelFamily, str]]] = ..., loaded_models: _Optional[_Iterable[_Union[LoadedModelRef, _Mapping]]] = ..., capacity: _Optional[int] = ..., load: _Optional[_Union[InstanceLoad, _Mapping]] = ..., state: _Optional[_Union[InstanceState, str]] = ..., register_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., heartbeat_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., version: _Optional[str] = ...) -> None: ...

class RegisterInstanceRequest(_message.Message):
    __slots__ = ("instance",)
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    instance: Instance
    def __init__(self, instance: _Optional[_Union[Instance, _Mapping]] = ...) -> None: ...

class RegisterInstanceResponse(_message.Message):
    __slots__ = ("instance", "heartbeat_interval_seconds", "heartbeat_ttl_seconds")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    instance: Instance
    heartbeat_interval_seconds: int
    heartbeat_ttl_seconds: int
    def __init__(self, instance: _Optional[_Union[Instance, _Mapping]] = ..., heartbeat_interval_seconds: _Optional[int] = ..., heartbeat_ttl_seconds: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("instance_id", "load", "loaded_models", "state")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    LOADED_MODELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    load: InstanceLoad
    loaded_models: _containers.RepeatedCompositeFieldContainer[LoadedModelRef]
    state: InstanceState
    def __init__(self, instance_id: _Optional[str] = ..., load: _Optional[_Union[InstanceLoad, _Mapping]] = ..., loaded_models: _Optional[_Iterable[_Union[LoadedModelRef, _Mapping]]] = ..., state: _Optional[_Union[InstanceState, str]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("instance",)
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    instance: Instance
    def __init__(self, instance: _Optional[_Union[Instance, _Mapping]] = ...) -> None: ...

class DeregisterInstanceRequest(_message.Message):
    __slots__ = ("instance_id",)
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    def __init__(self, instance_id: _Optional[str] = ...) -> None: ...

class DeregisterInstanceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListInstancesRequest(_message.Message):
    __slots__ = ("pagination", "family", "hardware_type", "include_down")
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_TYPE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DOWN_FIELD_NUMBER: _ClassVar[int]
    pagination: _common_pb2.Pagination
    family: _common_pb2.ModelFamily
    hardware_type: str
    include_down: bool
    def __init__(self, pagination: _Optional[_Union[_common_pb2.Pagination, _Mapping]] = ..., family: _Optional[_Union[_common_pb2.ModelFamily, str]] = ..., hardware_type: _Optional[str] = ..., include_down: _Optional[bool] = ...) -> None: ...

class ListInstancesResponse(_message.Message):
    __slots__ = ("instances", "page_info")
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    PAGE_INFO_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    page_info: _common_pb2.PageInfo
    def __init__(self, instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ..., page_info: _Optional[_Union[_common_pb2.PageInfo, _Mapping]] = ...) -> None: ...

class ResolveRequest(_message.Message):
    __slots__ = ("model", "task", "hardware_preference", "variant")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    model: str
    task: str
    hardware_preference: _containers.RepeatedScalarFieldContainer[str]
    variant: str
    def __init__(self, model: _Optional[str] = ..., task: _Optional[str] = ..., hardware_preference: _Optional[_Iterable[str]] = ..., variant: _Optional[str] = ...) -> None: ...

class ResolvedInstance(_message.Message):
    __slots__ = ("instance", "load_score", "artifact")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    LOAD_SCORE_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    instance: Instance
    load_score: float
    artifact: Artifact
    def __init__(self, instance: _Optional[_Union[Instance, _Mapping]] = ..., load_score: _Optional[float] = ..., artifact: _Optional[_Union[Artifact, _Mapping]] = ...) -> None: ...

class ResolveResponse(_message.Message):
    __slots__ = ("model", "instances")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    model: Model
    instances: _containers.RepeatedCompositeFieldContainer[ResolvedInstance]
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ..., instances: _Optional[_Iterable[_Union[ResolvedInstance, _Mapping]]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("resume_revision",)
    RESUME_REVISION_FIELD_NUMBER: _ClassVar[int]
    resume_revision: int
    def __init__(self, resume_revision: _Optional[int] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("revision", "change_type", "model", "artifact", "instance")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CHANGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    revision: int
    change_type: ChangeType
    model: Model
    artifact: Artifact
    instance: Instance
    def __init__(self, revision: _Optional[int] = ..., change_type: _Optional[_Union[ChangeType, str]] = ..., model: _Optional[_Union[Model, _Mapping]] = ..., artifact: _Optional[_Union[Artifact, _Mapping]] = ..., instance: _Optional[_Union[Instance, _Mapping]] = ...) -> None: ...
