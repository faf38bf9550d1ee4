"""deploy/k8s, checked offline: every overlay builds with kustomize, validates against the Kubernetes
schemas (kubernetes-validate --strict) and KEDA's CRD schema, and agrees with the services' settings
(ports, probes, drain grace, env names), the registry catalog and the autoscalers.

Needs `kubectl` (with kustomize) on PATH; kubernetes-validate, jsonschema and yamllint are optional
(pip install kubernetes-validate==1.37.0 jsonschema==4.26.0 yamllint==1.38.0): tests needing a missing tool
are skipped, naming it.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import checks
from services.common.settings import ServerSettings, env_name
from services.gateway.settings import GatewaySettings

pytestmark = pytest.mark.skipif(checks.kubectl() is None, reason="kubectl (with kustomize) is not installed")

SETTINGS: dict[str, tuple[str, str]] = {
    # container name: (module, class)
    "gateway": ("services.gateway.settings", "GatewaySettings"),
    "registry": ("services.model_registry.settings", "RegistrySettings"),
    "diffusion": ("services.diffusion.settings", "DiffusionSettings"),
    "vision-language": ("services.vision_language.settings", "VisionLanguageSettings"),
}
FAMILY_OF = {"lumiserve-diffusion": "diffusion", "lumiserve-vision-language": "vision_language"}
# Placeholders for values that come from Secrets at run time.
SECRET_PLACEHOLDERS = {
    "LUMISERVE_DATABASE_URL": "postgresql://lumiserve:secret@lumiserve-postgres:5432/lumiserve"
}
GPU_RESOURCES = {"nvidia": "nvidia.com/gpu", "amd": "amd.com/gpu"}

Built = dict[str, list[dict[str, Any]]]  # overlay name: its objects


def settings_class(container: str) -> type[ServerSettings]:
    module, name = SETTINGS[container]
    return getattr(__import__(module, fromlist=[name]), name)


@pytest.fixture(scope="module")
def built() -> Built:
    return {overlay: checks.build(checks.K8S / "overlays" / overlay) for overlay in checks.OVERLAYS}


@pytest.fixture(scope="module")
def built_hpa(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tree = tmp_path_factory.mktemp("k8s-hpa")
    return {o: checks.build(checks.with_autoscaling(tree, o, "hpa")) for o in checks.OVERLAYS}


def model_containers(objects: list[dict[str, Any]]) -> list[checks.Container]:
    return [c for c in checks.containers(objects) if c.workload["metadata"]["name"] in FAMILY_OF]


def lumiserve_containers(objects: list[dict[str, Any]]) -> list[checks.Container]:
    return [c for c in checks.containers(objects) if c.spec["name"] in SETTINGS]


def load_settings(container: checks.Container, objects: list[dict[str, Any]], tmp: Path) -> ServerSettings:
    """The container's settings as the service will load them: its ConfigMap env, placeholders for
    Secrets, and the files its ConfigMap volumes mount written under `tmp` (paths rewritten)."""
    env = dict(container.env)
    for name in container.secret_env:
        env.setdefault(name, SECRET_PLACEHOLDERS.get(name, "placeholder"))
    for path, content in container.mounted_files(objects):
        local = tmp / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(content)
        env = {k: str(tmp / v.lstrip("/")) if v == path else v for k, v in env.items()}
    return settings_class(container.spec["name"]).load([], environ=env)


# -- builds and schemas


def test_there_is_an_overlay_per_hardware_type() -> None:
    assert set(checks.OVERLAYS) >= {"cpu", "nvidia-l4", "nvidia-a100", "nvidia-h100", "amd-mi300"}


@pytest.mark.parametrize("flavour", ["keda", "hpa"])
def test_overlays_pass_kubernetes_validate_strict(flavour: str, built: Built, built_hpa: Built) -> None:
    tool = shutil.which("kubernetes-validate") or str(Path(sys.executable).with_name("kubernetes-validate"))
    if not Path(tool).exists():
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate==1.37.0)")
    for overlay, objects in (built if flavour == "keda" else built_hpa).items():
        result = subprocess.run(
            [tool, "--strict", "--quiet", "--no-warn", "-k", "1.32.0", "-"],
            input=yaml.safe_dump_all(objects),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"{overlay} ({flavour}):\n{result.stdout}\n{result.stderr}"


def test_scaled_objects_match_the_keda_crd_schema(built: Built) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")
    if not checks.KEDA_SCALEDOBJECT_CRD.is_file():
        pytest.skip(f"KEDA CRD not found at {checks.KEDA_SCALEDOBJECT_CRD}")
    schema = checks.crd_schema(checks.KEDA_SCALEDOBJECT_CRD, "v1alpha1")
    for overlay, objects in built.items():
        scaled = checks.by_kind(objects, "ScaledObject")
        assert set(scaled) == set(FAMILY_OF), overlay
        for obj in scaled.values():
            jsonschema.validate(obj, schema)
            assert obj["spec"]["scaleTargetRef"]["name"] in checks.by_kind(objects, "Deployment")
    # The strict schema does reject a field KEDA does not know.
    bad = next(iter(checks.by_kind(built["cpu"], "ScaledObject").values()))
    bad = {**bad, "spec": {**bad["spec"], "minReplicas": 1}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_yaml_is_lint_clean() -> None:
    tool = shutil.which("yamllint") or str(Path(sys.executable).with_name("yamllint"))
    if not Path(tool).exists():
        pytest.skip("yamllint is not installed (pip install yamllint==1.38.0)")
    config = checks.DEPLOY / ".yamllint.yaml"
    result = subprocess.run(
        [tool, "--strict", "-c", str(config), str(checks.K8S)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- the services' settings


def registration_variables() -> set[str]:
    """What the model Deployments set so that a replica registers itself with its overlay's hardware type:
    services/common/registration.py's RegistrationSettings (the hardware type included)."""
    from services.common.registration import RegistrationSettings

    return {env_name(f.name) for f in dataclasses.fields(RegistrationSettings)}


def test_every_lumiserve_variable_is_a_setting_of_its_service(built: Built) -> None:
    for overlay, objects in built.items():
        containers = lumiserve_containers(objects)
        assert {c.spec["name"] for c in containers} == set(SETTINGS), overlay
        for container in containers:
            known = {env_name(f.name) for f in dataclasses.fields(settings_class(container.spec["name"]))}
            used = {n for n in [*container.env, *container.secret_env] if n.startswith("LUMISERVE_")}
            where = f"{overlay}/{container.spec['name']}"
            assert used <= known, f"{where}: unknown settings {sorted(used - known)}"


@pytest.mark.parametrize("container", ["diffusion", "vision-language"])
def test_model_services_read_the_registration_variables_the_deployments_set(container: str) -> None:
    known = {env_name(f.name) for f in dataclasses.fields(settings_class(container))}
    assert registration_variables() <= known, sorted(registration_variables() - known)


def test_model_replicas_register_where_the_gateway_can_dial_them(built: Built) -> None:
    for overlay, objects in built.items():
        registry = next(c for c in lumiserve_containers(objects) if c.spec["name"] == "registry")
        for container in model_containers(objects):
            where = f"{overlay}/{container.spec['name']}"
            host, _, port = container.env["LUMISERVE_REGISTRY_ADDRESS"].rpartition(":")
            assert host == registry.workload["metadata"]["name"] and int(port) == registry.port("grpc"), where
            env = {e["name"]: e for e in container.spec["env"]}
            assert env["LUMISERVE_ADVERTISE_ADDRESS"]["value"] == f"$(POD_IP):{container.port('grpc')}", where
            assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
            hardware = env["LUMISERVE_HARDWARE_TYPE"]["valueFrom"]["fieldRef"]["fieldPath"]
            assert hardware == "metadata.labels['lumiserve.io/hardware-type']", where


def test_settings_load_and_ports_probes_and_grace_match(built: Built, tmp_path: Path) -> None:
    for overlay, objects in built.items():
        services = checks.by_kind(objects, "Service")
        for container in lumiserve_containers(objects):
            where = f"{overlay}/{container.spec['name']}"
            settings = load_settings(container, objects, tmp_path / overlay / container.spec["name"])
            assert settings.host == "0.0.0.0", where
            assert container.port("grpc") == settings.port, where
            assert container.port("metrics") == settings.metrics_port, where
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container.spec[probe]["grpc"]["port"] == settings.port, f"{where} {probe}"
            annotations = container.workload["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/port"] == str(settings.metrics_port), where
            pre_stop = container.spec["lifecycle"]["preStop"]["sleep"]["seconds"]
            grace = container.pod["terminationGracePeriodSeconds"]
            assert grace > pre_stop + settings.drain_grace_seconds, where
            service = services[container.workload["metadata"]["name"]]
            ports = {p["name"]: p for p in service["spec"]["ports"]}
            assert ports["grpc"]["targetPort"] == "grpc" and ports["metrics"]["targetPort"] == "metrics"
            if isinstance(settings, GatewaySettings):
                host, _, port = settings.registry_address.rpartition(":")
                registry = {p["name"]: p["port"] for p in services[host]["spec"]["ports"]}
                registry_port = next(
                    c for c in lumiserve_containers(objects) if c.spec["name"] == "registry"
                ).port("grpc")
                assert int(port) == registry["grpc"] == registry_port, where


def test_startup_probe_allows_model_loading(built: Built) -> None:
    for overlay, objects in built.items():
        for container in model_containers(objects):
            probe = container.spec["startupProbe"]
            assert probe["periodSeconds"] * probe["failureThreshold"] >= 300, overlay


# -- hardware, models and the catalog


def test_overlays_set_hardware_type_image_build_and_accelerator(built: Built) -> None:
    for overlay, objects in built.items():
        vendor = overlay.split("-")[0]
        for container in model_containers(objects):
            where = f"{overlay}/{container.spec['name']}"
            pod = container.pod
            assert container.pod_labels["lumiserve.io/hardware-type"] == overlay, where
            limits = container.spec["resources"]["limits"]
            if vendor in GPU_RESOURCES:
                assert int(limits[GPU_RESOURCES[vendor]]) >= 1, where
                assert any(t["key"] == GPU_RESOURCES[vendor] for t in pod["tolerations"]), where
                terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                keys = {e["key"] for t in terms["nodeSelectorTerms"] for e in t["matchExpressions"]}
                assert any(k.startswith(vendor) for k in keys), where
                assert container.env.get("HF_HUB_OFFLINE") == "0", where
            else:
                assert not set(limits) & set(GPU_RESOURCES.values()), where
            if vendor == "nvidia":
                assert pod["runtimeClassName"] == "nvidia", where


def test_images_name_a_dockerfile_of_their_build(built: Built) -> None:
    for overlay, objects in built.items():
        for container in lumiserve_containers(objects):
            image = container.spec["image"]
            match = re.fullmatch(r"ghcr\.io/lumiserve/([a-z-]+):(\d+\.\d+\.\d+)(?:-([a-z0-9-]+))?", image)
            assert match, f"{overlay}: {image} is not a pinned lumiserve image"
            name, _, build = match.groups()
            dockerfile = checks.DEPLOY / "docker" / name / (f"Dockerfile.{build}" if build else "Dockerfile")
            assert dockerfile.is_file(), f"{overlay}: {image} has no {dockerfile}"
    tags = {c.spec["image"] for c in model_containers(built["nvidia-h100"])}
    assert "ghcr.io/lumiserve/diffusion:0.1.0-cuda-tensorrt" in tags
    assert {c.spec["image"].rsplit("-", 1)[1] for c in model_containers(built["amd-mi300"])} == {"rocm"}


def served_models(container: checks.Container, objects: list[dict[str, Any]], tmp: Path) -> set[str]:
    settings = load_settings(container, objects, tmp)
    if hasattr(settings, "model_configs"):
        return {c.id for c in settings.model_configs()}
    return {spec.model for spec in settings.model_specs()}


def test_catalog_has_a_variant_for_every_served_model_on_the_overlays_hardware(
    built: Built, tmp_path: Path
) -> None:
    from services.model_registry.catalog import parse_catalog

    for overlay, objects in built.items():
        maps = checks.by_kind(objects, "ConfigMap").values()
        catalog_map = next(m for m in maps if "catalog.yaml" in m.get("data", {}))
        catalog = {m.id: m for m in parse_catalog(catalog_map["data"]["catalog.yaml"], overlay).models}
        for container in model_containers(objects):
            family = FAMILY_OF[container.workload["metadata"]["name"]]
            for model in served_models(container, objects, tmp_path / overlay):
                assert model in catalog, f"{overlay}: {model} is served but not in the catalog"
                assert catalog[model].family == family, f"{overlay}: {model}"
                targets = [v.hardware_targets for v in catalog[model].variants]
                assert any(not t or overlay in t for t in targets), f"{overlay}: no {model} variant fits it"


def test_scaled_objects_query_the_models_of_their_deployment(built: Built, tmp_path: Path) -> None:
    for overlay, objects in built.items():
        deployments = {c.workload["metadata"]["name"]: c for c in model_containers(objects)}
        for name, query in checks.keda_queries(objects):
            target = checks.by_kind(objects, "ScaledObject")[name]["spec"]["scaleTargetRef"]["name"]
            served = served_models(deployments[target], objects, tmp_path / overlay)
            (selector,) = checks.selectors(query)
            models = next(m for m in selector.matchers if m.label == "model")
            assert models.op == "=~"
            # Its models, and "" (requests naming no model, served by any replica of the family).
            assert set(models.value.split("|")) == served | {""}, f"{overlay}/{name}: {query}"
            family = [m.value for m in selector.matchers if m.label == "family"]
            assert family in ([FAMILY_OF[target]], []), query


def test_scale_to_zero_only_where_a_refusal_trigger_can_wake_it(built: Built) -> None:
    for overlay, objects in built.items():
        for obj in checks.by_kind(objects, "ScaledObject").values():
            if obj["spec"]["minReplicaCount"] == 0:
                names = {t.get("name") for t in obj["spec"]["triggers"]}
                assert "refused-without-replica" in names, overlay
        if overlay == "cpu":
            scaled = checks.by_kind(objects, "ScaledObject").values()
            assert all(o["spec"]["minReplicaCount"] >= 1 for o in scaled)


def test_hpa_flavour_replaces_keda(built_hpa: Built) -> None:
    for overlay, objects in built_hpa.items():
        assert not checks.by_kind(objects, "ScaledObject"), overlay
        hpas = checks.by_kind(objects, "HorizontalPodAutoscaler")
        assert set(hpas) == set(FAMILY_OF), overlay
        for name, hpa in hpas.items():
            assert hpa["spec"]["scaleTargetRef"]["name"] == name
            assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"] >= 1


def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(built: Built) -> None:
    for overlay, objects in built.items():
        for name in FAMILY_OF:
            assert "replicas" not in checks.by_kind(objects, "Deployment")[name]["spec"], overlay


# -- availability, security, networking, monitoring


def test_every_workload_has_a_pdb_resources_and_runs_unprivileged(built: Built) -> None:
    for overlay, objects in built.items():
        pdbs = checks.by_kind(objects, "PodDisruptionBudget")
        for container in checks.containers(objects):
            where = f"{overlay}/{container.workload['metadata']['name']}"
            resources = container.spec["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(
                resources["limits"]
            ), where
            assert container.pod["securityContext"]["runAsNonRoot"] is True, where
            security = container.spec["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert security["readOnlyRootFilesystem"] is True, where
            if container.workload["kind"] == "Deployment":
                labels = container.pod_labels
                assert any(
                    p["spec"]["selector"]["matchLabels"].items() <= labels.items() for p in pdbs.values()
                ), f"{where} has no PodDisruptionBudget"


def _rule_allows_outside(rule: dict[str, Any]) -> bool:
    peers = rule.get("from")
    if not peers:
        return True
    return any("ipBlock" in p or ("namespaceSelector" in p and "podSelector" not in p) for p in peers)


def test_only_the_gateway_grpc_port_is_reachable_from_outside(built: Built) -> None:
    for overlay, objects in built.items():
        policies = checks.by_kind(objects, "NetworkPolicy").values()
        assert any(p["spec"]["podSelector"] == {} and "ingress" not in p["spec"] for p in policies), overlay
        for container in checks.containers(objects):
            labels = container.pod_labels
            name = container.workload["metadata"]["name"]
            rules = [
                rule
                for p in policies
                if p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()
                for rule in p["spec"].get("ingress", [])
            ]
            assert rules, f"{overlay}/{name}: no ingress allowed at all"
            for rule in rules:
                if not _rule_allows_outside(rule):
                    continue
                ports = {p["port"] for p in rule.get("ports", [])}
                if name == "lumiserve-gateway" and ports == {"grpc"}:
                    assert not rule.get("from"), overlay
                    continue
                # From outside the namespace: only Prometheus (the monitoring namespace), only metrics.
                assert ports == {"metrics"}, f"{overlay}/{name}: {rule}"
                for peer in rule["from"]:
                    namespace = peer["namespaceSelector"]["matchLabels"]
                    assert namespace == {"kubernetes.io/metadata.name": "monitoring"}, f"{overlay}/{name}"


def test_every_metrics_port_has_a_service_monitor(built: Built) -> None:
    for overlay, objects in built.items():
        monitors = checks.by_kind(objects, "ServiceMonitor").values()
        services = checks.by_kind(objects, "Service").values()
        for container in lumiserve_containers(objects):
            labels = container.pod_labels
            selected = [s for s in services if s["spec"].get("selector")]
            service = next(s for s in selected if s["spec"]["selector"].items() <= labels.items())
            assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
            monitor = next(
                m
                for m in monitors
                if m["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
            )
            endpoint = next(e for e in monitor["spec"]["endpoints"] if e["port"] == "metrics")
            # lumiserve metrics have a `service` label: it must not be renamed to exported_service.
            assert endpoint["honorLabels"] is True, overlay
