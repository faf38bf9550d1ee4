"""Offline checks of deploy/: build the kustomize overlays, validate what kubectl cannot (KEDA objects
against their CRD schema), resolve a container's effective LUMISERVE_* environment, and read the metric
names and labels that PromQL queries use. Used by tests/*/test_deploy_*.py and scripts/validate_deploy.sh.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
CRDS = REPO.parent / "shared" / "crds"
KEDA_SCALEDOBJECT_CRD = CRDS / "keda.sh_scaledobjects.yaml"

# Labels Prometheus attaches to every scraped series (target labels), not exported by lumiserve.
TARGET_LABELS = frozenset({"namespace", "job", "instance", "pod", "container", "endpoint"})


def kubectl() -> str | None:
    return shutil.which("kubectl")


def build(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR` as a list of objects."""
    result = subprocess.run(
        [kubectl() or "kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def with_autoscaling(tree: Path, overlay: str, flavour: str) -> Path:
    """A copy of deploy/k8s under `tree` whose `overlay` uses autoscaling/<flavour> (keda or hpa)."""
    if not (tree / "k8s").exists():
        shutil.copytree(K8S, tree / "k8s")
    path = tree / "k8s" / "overlays" / overlay / "kustomization.yaml"
    text = path.read_text()
    if "../../autoscaling/keda" not in text:
        raise ValueError(f"{overlay}: its kustomization does not name ../../autoscaling/keda")
    path.write_text(text.replace("../../autoscaling/keda", f"../../autoscaling/{flavour}"))
    return path.parent


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


# -- KEDA schema


def strict_schema(schema: Any) -> Any:
    """The CRD's openAPIV3Schema with unknown fields rejected, as the API server's strict field validation
    does for structural schemas (objects with `properties` and no additionalProperties / preserve-unknown)."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def crd_schema(crd_file: Path, version: str) -> dict[str, Any]:
    crd = yaml.safe_load(crd_file.read_text())
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return strict_schema(entry["schema"]["openAPIV3Schema"])
    raise KeyError(f"{crd_file.name} has no version {version}")


# -- containers and their settings


@dataclass
class Container:
    """A container of a built workload, with its ConfigMaps resolved."""

    workload: dict[str, Any]
    spec: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    secret_env: set[str] = field(default_factory=set)

    @property
    def pod(self) -> dict[str, Any]:
        return self.workload["spec"]["template"]["spec"]

    @property
    def pod_labels(self) -> dict[str, str]:
        return self.workload["spec"]["template"]["metadata"].get("labels", {})

    def port(self, name: str) -> int:
        return next(p["containerPort"] for p in self.spec.get("ports", []) if p["name"] == name)

    def mounted_files(self, objects: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        """(path in the container, content) of every file mounted from a ConfigMap."""
        config_maps = by_kind(objects, "ConfigMap")
        volumes = {v["name"]: v for v in self.pod.get("volumes", [])}
        for mount in self.spec.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                for key, content in config_maps[volume["configMap"]["name"]].get("data", {}).items():
                    yield f"{mount['mountPath'].rstrip('/')}/{key}", content


def containers(objects: list[dict[str, Any]]) -> Iterator[Container]:
    config_maps = by_kind(objects, "ConfigMap")
    for workload in objects:
        if workload["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for spec in workload["spec"]["template"]["spec"]["containers"]:
            container = Container(workload, spec)
            for source in spec.get("envFrom", []):
                if "configMapRef" in source:
                    container.env.update(config_maps[source["configMapRef"]["name"]].get("data", {}))
            for item in spec.get("env", []):
                if "value" in item:
                    container.env[item["name"]] = item["value"]
                else:
                    container.secret_env.add(item["name"])
            yield container


# -- PromQL


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass
class Selector:
    """One metric a query reads, the label matchers on it and the labels it is grouped by."""

    metric: str
    matchers: list[Matcher]
    grouping: set[str]


_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_TEMPLATE = re.compile(r"<<[^>]*>>")  # prometheus-adapter templates (<<.LabelMatchers>>, <<.Series>>)


def selectors(query: str, prefix: str = "lumiserve_") -> list[Selector]:
    """The `prefix`* metrics a PromQL query selects. Grouping labels (`by (...)`) apply to all of them."""
    query = _TEMPLATE.sub("", query)
    grouping = {
        label.strip() for group in _GROUPING.findall(query) for label in group.split(",") if label.strip()
    }
    found = []
    for match in _SELECTOR.finditer(_GROUPING.sub("", query)):
        name, body = match.group(1), match.group(2) or ""
        if name.startswith(prefix):
            matchers = [Matcher(*m) for m in _MATCHER.findall(body)]
            found.append(Selector(name, matchers, grouping))
    return found


def keda_queries(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(ScaledObject name, query) of every Prometheus trigger."""
    return [
        (o["metadata"]["name"], trigger["metadata"]["query"])
        for o in objects
        if o["kind"] == "ScaledObject"
        for trigger in o["spec"]["triggers"]
        if trigger["type"] == "prometheus"
    ]


def hpa_queries(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """External metrics of the HPAs, written as the selector prometheus-adapter turns them into."""
    queries = []
    for o in objects:
        if o["kind"] != "HorizontalPodAutoscaler":
            continue
        for metric in o["spec"]["metrics"]:
            if metric["type"] == "External":
                spec = metric["external"]["metric"]
                labels = spec.get("selector", {}).get("matchLabels", {})
                body = ",".join(f'{k}="{v}"' for k, v in labels.items())
                queries.append((o["metadata"]["name"], f"{spec['name']}{{{body}}}"))
    return queries


def adapter_queries() -> list[tuple[str, str]]:
    values = yaml.safe_load((K8S / "autoscaling" / "hpa" / "prometheus-adapter-values.yaml").read_text())
    queries = []
    for rule in values["rules"]["external"]:
        queries.append(("seriesQuery", rule["seriesQuery"]))
        queries.append(("metricsQuery", rule["metricsQuery"]))
        queries.append(("name.as", rule["name"]["as"]))
    return queries


def dashboard_queries() -> list[tuple[str, str]]:
    import json

    dashboard = json.loads((DEPLOY / "grafana" / "lumiserve.json").read_text())
    queries = [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append((f"${variable['name']}", variable["definition"]))
    return queries
