"""The gateway, the registry, the shared runtime and the CLI start-up path import without torch."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BLOCKER = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    HEAVY = {"torch", "diffusers", "transformers", "accelerate", "safetensors", "tokenizers"}

    class BlockHeavy:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in HEAVY:
                raise ImportError(f"{name} must not be imported here")

    sys.meta_path.insert(0, BlockHeavy())
    imported = []
    for package in ("services.common", "services.gateway", "services.model_registry", "lumiserve.cli"):
        try:
            module = importlib.import_module(package)
        except ModuleNotFoundError as error:
            if error.name == package:  # not written yet
                continue
            raise
        imported.append(package)
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), package + "."):
            importlib.import_module(info.name)
            imported.append(info.name)
    print("\\n".join(imported))
    """
)


def test_light_packages_import_without_torch():
    result = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    imported = result.stdout.split()
    assert "services.common.server" in imported
    assert "lumiserve.cli" in imported


DIFFUSION_SERVER = textwrap.dedent(
    """
    import sys

    class BlockHeavy:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in {"torch", "diffusers", "transformers", "accelerate"}:
                raise ImportError(f"{name} must not be imported in the diffusion server process")

    sys.meta_path.insert(0, BlockHeavy())
    from services.diffusion.main import build
    from services.diffusion.settings import DiffusionSettings

    host, plane = build(DiffusionSettings(port=0, metrics_port=-1, models=["m=/nowhere"]))
    print(type(plane).__name__)
    """
)


def test_the_diffusion_server_process_runs_without_torch():
    """Only the engine process loads torch and the models (~0.5 GB less per replica)."""
    result = subprocess.run(
        [sys.executable, "-c", DIFFUSION_SERVER], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["EngineClient"]
