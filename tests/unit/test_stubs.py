"""The committed stubs match protos/, and every service of the v1 contracts is importable."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_match_protos():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("module", "service"),
    [
        ("lumiserve.diffusion.v1.diffusion_pb2", "lumiserve.diffusion.v1.DiffusionService"),
        (
            "lumiserve.vision_language.v1.vision_language_pb2",
            "lumiserve.vision_language.v1.VisionLanguageService",
        ),
        (
            "lumiserve.model_registry.v1.model_registry_pb2",
            "lumiserve.model_registry.v1.ModelRegistryService",
        ),
    ],
)
def test_services_are_importable(module, service):
    descriptor = __import__(module, fromlist=["DESCRIPTOR"]).DESCRIPTOR
    assert service in {s.full_name for s in descriptor.services_by_name.values()}


def test_streaming_rpcs_are_server_streaming():
    from lumiserve.diffusion.v1 import diffusion_pb2
    from lumiserve.model_registry.v1 import model_registry_pb2
    from lumiserve.vision_language.v1 import vision_language_pb2

    streaming = {
        (diffusion_pb2, "DiffusionService", "Generate"),
        (vision_language_pb2, "VisionLanguageService", "Chat"),
        (vision_language_pb2, "VisionLanguageService", "CaptionBatch"),
        (model_registry_pb2, "ModelRegistryService", "Watch"),
    }
    for module, service, method in streaming:
        rpc = module.DESCRIPTOR.services_by_name[service].methods_by_name[method]
        assert rpc.server_streaming and not rpc.client_streaming
