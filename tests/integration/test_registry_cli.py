"""`lumiserve models add|list|show|rm` against a real registry."""

from __future__ import annotations

import asyncio

import pytest
import yaml
from typer.testing import CliRunner

from services.model_registry import testing
from services.model_registry.cli import app

runner = CliRunner()


@pytest.fixture
async def address(tmp_path):
    with testing.database_url("sqlite", tmp_path) as url:
        async with testing.running_registry(url, seed_catalog=True) as registry:
            yield registry.address


async def models(*args: str, env: dict[str, str] | None = None):
    # The server shares this event loop: the blocking CLI runs on a thread.
    return await asyncio.to_thread(runner.invoke, app, list(args), env=env)


async def test_add_list_show_rm(address):
    token = {"LUMISERVE_REGISTRY_TOKEN": testing.ADMIN_TOKEN, "LUMISERVE_REGISTRY_ADDRESS": address}
    added = await models(
        "add",
        "llava-hf/llava-1.5-7b-hf",
        "--family",
        "vision_language",
        "--source",
        "llava-hf/llava-1.5-7b-hf",
        "--task",
        "chat",
        "--task",
        "vqa",
        "--variant",
        "name=7b,size=7b,precision=fp16,context=4096,memory=16GiB,hardware=nvidia-l4+nvidia-a100",
        "--variant",
        "name=13b,size=13b,context=4096,source=llava-hf/llava-1.5-13b-hf",
        "--label",
        "team=vision",
        env=token,
    )
    assert added.exit_code == 0, added.output
    assert added.stdout.strip() == "added model llava-hf/llava-1.5-7b-hf"

    listed = await models("list", "--registry", address)
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "FAMILY", "TASKS", "VARIANTS", "SOURCE"]
    assert [line.split()[0] for line in lines[1:]] == [
        "llava-hf/llava-1.5-7b-hf",
        "toyworld-llava",
        "toyworld-sd",
    ]
    only_diffusion = await models("list", "--registry", address, "--family", "diffusion")
    assert [line.split()[0] for line in only_diffusion.stdout.splitlines()[1:]] == ["toyworld-sd"]
    on_l4 = await models("list", "--registry", address, "--hardware", "nvidia-a100", "--task", "chat")
    assert "llava-hf/llava-1.5-7b-hf" in on_l4.stdout

    shown = await models("show", "llava-hf/llava-1.5-7b-hf", "--registry", address)
    entry = yaml.safe_load(shown.stdout)
    assert entry["default_variant"] == "7b"
    assert entry["variants"][0]["context_window"] == 4096
    assert entry["variants"][0]["memory_bytes"] == 16 * 2**30
    assert entry["variants"][1]["source"] == "llava-hf/llava-1.5-13b-hf"
    assert entry["labels"] == {"team": "vision"}

    removed = await models("rm", "llava-hf/llava-1.5-7b-hf", env=token)
    assert removed.exit_code == 0 and "removed" in removed.stdout
    gone = await models("show", "llava-hf/llava-1.5-7b-hf", "--registry", address)
    assert gone.exit_code == 1
    assert gone.stderr.strip().count("\n") == 0  # one line
    assert "NOT_FOUND" in gone.stderr and "llava-hf/llava-1.5-7b-hf" in gone.stderr


async def test_add_from_a_catalog_file(address, tmp_path):
    catalog = tmp_path / "extra.yaml"
    catalog.write_text(
        "models:\n"
        "  - {id: sd15, family: diffusion, source: stable-diffusion-v1-5/stable-diffusion-v1-5,"
        " tasks: [txt2img, inpaint], variants: [{name: fp16, precision: fp16, backend: tensorrt}]}\n"
        "artifacts:\n"
        "  - {model_id: sd15, backend: tensorrt, gpu_arch: sm_90, size_bytes: 10,"
        f" checksum: 'sha256:{'a' * 64}', uri: 's3://e/sd15.plan'}}\n"
    )
    result = await models(
        "add", "--file", str(catalog), "--registry", address, "--token", testing.ADMIN_TOKEN
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "added model sd15"
    assert "added artifact" in result.stdout and "sd15/fp16/tensorrt/sm_90" in result.stdout
    again = await models("add", "--file", str(catalog), "--registry", address, "--token", testing.ADMIN_TOKEN)
    assert again.exit_code == 1 and "ALREADY_EXISTS" in again.stderr


async def test_errors_are_one_clear_line(address):
    no_token = await models("rm", "toyworld-sd", "--registry", address)
    assert no_token.exit_code == 1
    assert no_token.stderr.startswith("lumiserve models: UNAUTHENTICATED:")
    bad_spec = await models(
        "add", "x", "--family", "diffusion", "--source", "s", "--task", "txt2img", "--variant", "fp16",
        "--registry", address,
    )  # fmt: skip
    assert bad_spec.exit_code == 2 and "--variant[0]" in bad_spec.stderr
    bad_task = await models("add", "x", "--family", "diffusion", "--source", "s", "--task", "chat")
    assert bad_task.exit_code == 2 and "model.tasks[0]" in bad_task.stderr
    nowhere = await models("list", "--registry", "127.0.0.1:1")
    assert nowhere.exit_code == 1
    assert "cannot reach the registry at 127.0.0.1:1" in nowhere.stderr
    assert len(nowhere.stderr.strip().splitlines()) == 1
