"""Test-session set-up: offline Hugging Face, and tiny random-weight models built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """SD-1.x (+ inpainting UNet, ControlNet), LLaVA and LLaVA-NeXT folders, built offline (~5 s)."""
    from lumiserve.testing.tiny_models import build_all

    return build_all(Path(tmp_path_factory.mktemp("tiny-models")))
