"""Registry rules that need no database: validation, catalog files, paging, auth, ranking, conversion."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lumiserve.common.v1 import common_pb2
from lumiserve.model_registry.v1 import model_registry_pb2 as pb
from services.common.errors import InvalidArgument, PermissionDenied, Unauthenticated
from services.common.settings import SettingsError
from services.model_registry import convert
from services.model_registry.auth import ADMIN, INSTANCE, Authorizer
from services.model_registry.catalog import CatalogError, load_catalog, parse_bytes, parse_catalog
from services.model_registry.cli import parse_variant_spec
from services.model_registry.paging import MAX_PAGE_SIZE, decode_token, encode_token, page_size
from services.model_registry.records import (
    Artifact,
    Hardware,
    Instance,
    Load,
    LoadedModelRef,
    ModelRecord,
    Variant,
)
from services.model_registry.resolve import rank
from services.model_registry.settings import DEFAULT_CATALOG, RegistrySettings
from services.model_registry.validation import validate_artifact, validate_instance, validate_model

SHA = "sha256:" + "ab" * 32


def llava(**changes) -> ModelRecord:
    model = ModelRecord(
        id="llava-hf/llava-1.5-7b-hf",
        family="vision_language",
        source="llava-hf/llava-1.5-7b-hf",
        tasks=["chat", "vqa"],
        variants=[
            Variant("7b", size="7b", precision="fp16", backend="torch", context_window=4096),
            Variant(
                "7b-trt", size="7b", precision="fp16", backend="tensorrt", hardware_targets=["nvidia-h100"]
            ),
        ],
    )
    return dataclasses.replace(model, **changes)


def invalid_field(action) -> str:
    with pytest.raises(InvalidArgument) as caught:
        action()
    return caught.value.field


def test_valid_model_gets_its_first_variant_as_default():
    assert validate_model(llava()).default_variant == "7b"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"id": "Upper/Case"}, "model.id"),
        ({"id": "a/../b"}, "model.id"),
        ({"id": ""}, "model.id"),
        ({"family": "audio"}, "model.family"),
        ({"family": ""}, "model.family"),
        ({"source": ""}, "model.source"),
        ({"source": "has space"}, "model.source"),
        ({"tasks": []}, "model.tasks"),
        ({"tasks": ["txt2img"]}, "model.tasks[0]"),
        ({"tasks": ["chat", "chat"]}, "model.tasks"),
        ({"default_variant": "13b"}, "model.default_variant"),
        ({"variants": [Variant("a"), Variant("a")]}, "model.variants.name"),
        ({"variants": [Variant("BAD NAME")]}, "model.variants[0].name"),
        ({"variants": [Variant("a", precision="fp12")]}, "model.variants[0].precision"),
        (
            {"variants": [Variant("a", hardware_targets=["Nvidia H100"])]},
            "model.variants[0].hardware_targets[0]",
        ),
        ({"labels": {"Bad Key": "x"}}, "model.labels[Bad Key]"),
    ],
)
def test_bad_model_fields_are_named(changes, field):
    assert invalid_field(lambda: validate_model(llava(**changes))) == field


def test_context_window_belongs_to_vision_language_models():
    model = ModelRecord(
        "sd", "diffusion", "repo/sd", tasks=["txt2img"], variants=[Variant("a", context_window=77)]
    )
    assert invalid_field(lambda: validate_model(model)) == "model.variants[0].context_window"


def test_artifact_rules():
    model = validate_model(llava())
    good = Artifact("", model.id, "7b-trt", "tensorrt", "sm_90", "b1:336", 10, SHA, "s3://b/e.plan")
    assert validate_artifact(dataclasses.replace(good), model).variant == "7b-trt"
    assert validate_artifact(dataclasses.replace(good, variant=""), model).variant == "7b"  # the default
    for changes, field in [
        ({"variant": "13b"}, "artifact.variant"),
        ({"backend": ""}, "artifact.backend"),
        ({"gpu_arch": ""}, "artifact.gpu_arch"),
        ({"gpu_arch": "SM 90"}, "artifact.gpu_arch"),
        ({"checksum": "md5:abc"}, "artifact.checksum"),
        ({"uri": "/no/scheme"}, "artifact.uri"),
        ({"size_bytes": 0}, "artifact.size_bytes"),
    ]:
        assert (
            invalid_field(lambda c=changes: validate_artifact(dataclasses.replace(good, **c), model)) == field
        )


def test_instance_rules():
    good = Instance(
        "pod-1", "10.0.0.1:50051", Hardware("nvidia-h100", "cuda", "sm_90"), ["diffusion"], capacity=4
    )
    assert validate_instance(dataclasses.replace(good, state="")).state == "serving"
    for changes, field in [
        ({"endpoint": "no-port"}, "instance.endpoint"),
        ({"endpoint": "host:70000"}, "instance.endpoint"),
        ({"id": ""}, "instance.id"),
        ({"capacity": 0}, "instance.capacity"),
        ({"families": []}, "instance.families"),
        ({"hardware": Hardware("")}, "instance.hardware.type"),
        ({"state": "down"}, "instance.state"),
        ({"loaded_models": [LoadedModelRef("Bad Id")]}, "instance.loaded_models[0].model_id"),
    ]:
        assert invalid_field(lambda c=changes: validate_instance(dataclasses.replace(good, **c))) == field


def _uncommented_examples(text: str) -> str:
    """The default catalog with its commented real-model examples switched on."""
    lines = []
    for line in text.splitlines():
        if line.startswith("# artifacts:"):
            lines.append(line[2:])
        elif line.startswith("#  "):
            lines.append(line[1:])
        elif not line.startswith("#"):
            lines.append(line)
    return "\n".join(lines).replace("<64 hex digits>", "0" * 64)


def test_default_catalog_lists_the_toy_world_and_valid_real_examples():
    catalog = load_catalog(DEFAULT_CATALOG)
    by_id = {m.id: m for m in catalog.models}
    assert set(by_id) == {"toyworld-sd", "toyworld-llava"}
    assert by_id["toyworld-sd"].family == "diffusion"
    assert by_id["toyworld-sd"].source == "models/toyworld-sd"
    assert by_id["toyworld-sd"].tasks == ["txt2img", "img2img"]
    assert by_id["toyworld-llava"].family == "vision_language"
    assert by_id["toyworld-llava"].tasks == ["chat", "caption", "vqa"]
    real = parse_catalog(_uncommented_examples(DEFAULT_CATALOG.read_text()))
    ids = {m.id for m in real.models}
    assert {"stable-diffusion-v1-5/stable-diffusion-v1-5", "llava-hf/llava-v1.6-mistral-7b-hf"} <= ids
    llava_15 = next(m for m in real.models if m.id == "llava-hf/llava-1.5-7b-hf")
    assert {v.size for v in llava_15.variants} == {"7b", "13b"}
    assert llava_15.variant("7b-fp16").context_window == 4096
    assert llava_15.variant("7b-fp16").memory_bytes == 16 * 2**30
    assert real.artifacts[0].gpu_arch == "sm_90"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "models: [{id: a, family: diffusion, source: s, tasks: [txt2img], colour: red}]",
            "models[0].colour",
        ),
        ("models: [{id: a, family: diffusion, source: s, tasks: [chat]}]", "models[0].tasks[0]"),
        (
            "models: [{id: a, family: diffusion, source: s, tasks: [txt2img],"
            " variants: [{name: v, memory: 3 parsecs}]}]",
            "models[0].variants[0].memory",
        ),
        ("models: {id: a}", "models and artifacts must be lists"),
        (
            "models: [{id: a, family: diffusion, source: s, tasks: [txt2img]},"
            " {id: a, family: diffusion, source: s, tasks: [txt2img]}]",
            "appears twice",
        ),
        ("models: [unclosed", "not valid YAML"),
    ],
)
def test_catalog_errors_name_the_file_and_field(text, message):
    with pytest.raises(CatalogError) as caught:
        parse_catalog(text, "mine.yaml")
    assert str(caught.value).startswith("mine.yaml: ")
    assert message in str(caught.value)


def test_missing_catalog_file_is_one_clear_error(tmp_path: Path):
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "nope.yaml")


def test_quantities():
    assert parse_bytes("16GiB", "m") == 16 * 2**30
    assert parse_bytes("1.5 MB", "m") == 1_500_000
    assert parse_bytes(123, "m") == 123
    with pytest.raises(InvalidArgument):
        parse_bytes(-1, "m")


def test_page_tokens_round_trip_and_reject_garbage():
    assert decode_token(encode_token("llava-hf/llava-1.5-7b-hf")) == "llava-hf/llava-1.5-7b-hf"
    assert decode_token("") == ""
    assert page_size(0) == 100 and page_size(10**6) == MAX_PAGE_SIZE
    for garbage in ("%%%", "bm90LWEtdG9rZW4"):
        assert invalid_field(lambda g=garbage: decode_token(g)) == "pagination.page_token"


def test_auth_roles():
    auth = Authorizer.from_tokens(admin=["adm"], instance=["ins"], gateway=["gw"])
    assert auth.roles([("authorization", "Bearer adm")]) == {ADMIN, INSTANCE}
    assert auth.roles([("authorization", "bearer ins")]) == {INSTANCE}
    # The gateway passes on the roles of the user it authenticated.
    assert auth.roles([("authorization", "Bearer gw"), ("x-lumiserve-roles", "admin")]) == {ADMIN, INSTANCE}
    assert auth.roles([("authorization", "Bearer gw")]) == set()
    with pytest.raises(Unauthenticated, match="only honoured from the trusted gateway"):
        auth.roles([("x-lumiserve-roles", "admin")])
    with pytest.raises(Unauthenticated, match="unknown registry token"):
        auth.roles([("authorization", "Bearer guess")])
    with pytest.raises(Unauthenticated, match="Bearer"):
        auth.roles([("authorization", "adm")])
    with pytest.raises(Unauthenticated):
        auth.roles([])
    with pytest.raises(PermissionDenied, match="CreateModel needs the admin role"):
        auth.require([("authorization", "Bearer ins")], ADMIN, "CreateModel")
    trusting = Authorizer.from_tokens(admin=["adm"], trust_roles_header=True)
    assert ADMIN in trusting.roles([("x-lumiserve-roles", "admin")])


def _instance(
    name: str, hardware: str, load: int, *, arch: str = "", loaded: tuple[str, ...] = ("m",)
) -> Instance:
    return Instance(
        name,
        f"{name}:1",
        Hardware(hardware, arch=arch),
        ["vision_language"],
        [LoadedModelRef(m) for m in loaded],
        capacity=4,
        load=Load(queue_depth=load),
    )


def test_rank_by_hardware_preference_then_load():
    model = validate_model(llava(id="m"))
    warm = [
        _instance("cpu-idle", "cpu", 0),
        _instance("h100-busy", "nvidia-h100", 3),
        _instance("h100-idle", "nvidia-h100", 1),
        _instance("l4", "nvidia-l4", 0),
    ]
    ranked = rank(model, warm, [], [], ["nvidia-h100", "nvidia-l4"])
    assert [r.instance.id for r in ranked] == ["h100-idle", "h100-busy", "l4", "cpu-idle"]
    assert ranked[0].load_score == pytest.approx(0.25)
    assert [r.instance.id for r in rank(model, warm, [], [])] == ["cpu-idle", "l4", "h100-idle", "h100-busy"]


def test_rank_falls_back_to_family_instances_on_the_variants_hardware():
    model = validate_model(llava(id="m"))
    cold = [_instance("cpu", "cpu", 0, loaded=()), _instance("h100", "nvidia-h100", 0, loaded=())]
    assert [r.instance.id for r in rank(model, [], cold, [], variant="7b-trt")] == ["h100"]
    assert {r.instance.id for r in rank(model, [], cold, [])} == {"cpu", "h100"}


def test_rank_attaches_the_artifact_for_the_instance_arch():
    model = validate_model(llava(id="m"))
    engines = [
        Artifact("old", "m", "7b-trt", "tensorrt", "sm_90", create_time=1),
        Artifact("new", "m", "7b-trt", "tensorrt", "sm_90", create_time=2),
        Artifact("onnx", "m", "7b-trt", "onnx", "sm_90", create_time=3),
        Artifact("ada", "m", "7b-trt", "tensorrt", "sm_89", create_time=4),
    ]
    h100 = _instance("h100", "nvidia-h100", 0, arch="sm_90")
    h100.loaded_models = [LoadedModelRef("m", "7b-trt")]
    l4 = _instance("l4", "nvidia-l4", 0, arch="sm_89")
    ranked = {r.instance.id: r.artifact for r in rank(model, [h100, l4], [], engines, variant="")}
    assert ranked["h100"].id == "new"  # newest of the variant's own backend
    assert "l4" not in ranked or ranked["l4"] is None  # l4 serves the default variant: no engine for it


def test_model_and_instance_round_trip_through_protobuf():
    model = validate_model(llava(labels={"team": "vision"}))
    assert convert.model_from_pb(convert.model_to_pb(model)) == model
    instance = validate_instance(_instance("pod", "nvidia-h100", 2, arch="sm_90"))
    instance.hardware.accelerator = "cuda"
    back = convert.instance_from_pb(convert.instance_to_pb(instance))
    assert back == instance


def test_unknown_enum_numbers_are_invalid_arguments():
    message = pb.Model(id="a", family=99, source="s", tasks=["txt2img"])
    assert invalid_field(lambda: convert.model_from_pb(message)) == "model.family"
    message = pb.Model(
        id="a", family=common_pb2.MODEL_FAMILY_DIFFUSION, variants=[pb.Variant(name="v", backend=42)]
    )
    assert invalid_field(lambda: convert.model_from_pb(message)) == "model.variants[0].backend"


def test_settings_checks():
    with pytest.raises(SettingsError, match="heartbeat_interval_seconds"):
        RegistrySettings.load(
            ["--heartbeat-interval-seconds", "20", "--heartbeat-ttl-seconds", "10"], environ={}
        )
    with pytest.raises(SettingsError, match="in-memory SQLite"):
        RegistrySettings.load(["--database-url", "sqlite://"], environ={})
    with pytest.raises(SettingsError, match="unsupported database"):
        RegistrySettings.load(["--database-url", "mysql://x/y"], environ={})
    settings = RegistrySettings.load([], environ={"LUMISERVE_REGISTRY_ADMIN_TOKENS": "a,b"})
    assert settings.registry_admin_tokens == ["a", "b"]
    assert settings.port == 50060


def test_cli_variant_spec():
    spec = parse_variant_spec(
        "name=7b,precision=fp16,context=4096,memory=16GiB,hardware=nvidia-l4+nvidia-a100", 0
    )
    assert spec == {
        "name": "7b",
        "precision": "fp16",
        "context_window": "4096",
        "memory": "16GiB",
        "hardware_targets": ["nvidia-l4", "nvidia-a100"],
    }
    assert invalid_field(lambda: parse_variant_spec("name", 1)) == "--variant[1]"
