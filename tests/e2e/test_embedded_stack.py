"""`lumiserve up` with the committed toy-world models, driven by the CLI and the Python clients."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lumiserve.client import AsyncClient, Client, Progress, Queued, Result, Started, user_message
from lumiserve.diffusion.v1 import diffusion_pb2
from lumiserve.processes import ServiceProcess
from services.gateway.auth import hash_key
from tests.e2e.conftest import wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, address: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    prefix = ["--address", address] if address else []
    return subprocess.run(
        [sys.executable, "-m", "lumiserve.cli", *prefix, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def port_is_free(address: str) -> bool:
    """Whether a new server could listen there (SO_REUSEADDR, as servers do: TIME_WAIT is no owner)."""
    host, _, port = address.rpartition(":")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    data = Path(tmp_path_factory.mktemp("up"))
    process = subprocess.Popen(
        [sys.executable, "-m", "lumiserve.cli", "up", "--data-dir", str(data), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready = data / "up.json"
    wait_until(lambda: ready.exists() or process.poll() is not None, "lumiserve up", timeout=240)
    assert ready.exists(), process.stdout.read()
    addresses = json.loads(ready.read_text())
    yield process, addresses
    if process.poll() is None:  # a test failed before the Ctrl-C test: still stop the stack cleanly
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def test_generate_then_ask_through_the_cli(up, tmp_path):
    _, addresses = up
    image = tmp_path / "circle.png"
    generated = cli("generate", "a red circle", "--seed", "5", "-o", str(image), address=addresses["gateway"])
    assert generated.returncode == 0, generated.stderr
    assert "wrote" in generated.stderr and "seed 5" in generated.stderr
    with Image.open(image) as png:
        assert png.size == (32, 32)
        assert "Seed: 5" in png.text["parameters"]
    answer = cli("ask", str(image), "What is in this image?", address=addresses["gateway"])
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip() == "a red circle"


def test_caption_a_folder_and_status(up, tmp_path):
    _, addresses = up
    from lumiserve.toyworld import world

    for name, (colour, shape) in {"a.png": ("green", "square"), "b.png": ("blue", "triangle")}.items():
        image, _ = world.render(colour, shape, rng=np.random.default_rng(1))
        image.save(tmp_path / name)
    captions = cli("caption", str(tmp_path), "--jsonl", address=addresses["gateway"])
    assert captions.returncode == 0, captions.stderr
    lines = [json.loads(line) for line in captions.stdout.splitlines()]
    assert {Path(entry["file"]).name: entry["caption"] for entry in lines} == {
        "a.png": "a green square",
        "b.png": "a blue triangle",
    }
    status = cli("status", address=addresses["gateway"])
    assert status.returncode == 0, status.stderr
    assert "toyworld-sd" in status.stdout and "toyworld-llava" in status.stdout


def test_ctrl_c_cancels_the_job_on_the_server(up):
    _, addresses = up
    command = [
        sys.executable,
        "-m",
        "lumiserve.cli",
        "--address",
        addresses["gateway"],
        "generate",
        "a red circle",
        "--steps",
        "150",
        "--size",
        "256x256",
        "--job-id",
        "ctrl-c",
        "-o",
        "/dev/null",
    ]
    generate = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with Client(addresses["gateway"], timeout=10) as client:

        def running() -> bool:
            try:
                job = client.diffusion.GetJob(diffusion_pb2.GetJobRequest(job_id="ctrl-c")).job
            except Exception:
                return False
            return job.state == diffusion_pb2.JOB_STATE_RUNNING and job.step >= 1

        wait_until(running, "the job to start stepping")
        generate.send_signal(signal.SIGINT)
        _, stderr = generate.communicate(timeout=30)
        assert generate.returncode == 130  # the shell convention for Ctrl-C
        assert "Traceback" not in stderr

        def cancelled() -> bool:
            job = client.diffusion.GetJob(diffusion_pb2.GetJobRequest(job_id="ctrl-c")).job
            return job.state == diffusion_pb2.JOB_STATE_CANCELLED

        wait_until(cancelled, "the server to cancel the job", timeout=30)
        job = client.diffusion.GetJob(diffusion_pb2.GetJobRequest(job_id="ctrl-c")).job
        assert job.step < 150


def test_sync_client(up):
    _, addresses = up
    with Client(addresses["gateway"], timeout=60) as client:
        events = list(client.generate("a yellow circle", seed=2, preview_every=5))
        kinds = [type(e) for e in events]
        assert kinds[0] is Queued and Started in kinds and kinds[-1] is Result
        steps = [e for e in events if isinstance(e, Progress)]
        assert [e.step for e in steps] == list(range(1, steps[0].total_steps + 1))
        assert [bool(e.previews) for e in steps] == [e.step % 5 == 0 for e in steps]
        (image,) = client.generate_images("a yellow circle", seed=2)
        assert image.size == (32, 32)
        deltas = list(client.chat([user_message("What is in this image?", [image])]))
        assert len(deltas) >= 1 and "".join(deltas) == "a yellow circle"


async def test_async_client(up):
    _, addresses = up
    async with AsyncClient(addresses["gateway"], timeout=60) as client:
        (image,) = await client.generate_images("a white square", seed=4)
        assert await client.ask([image], "What is in this image?") == "a white square"
        session = await client.create_session()
        answer = "".join(
            [
                d
                async for d in client.chat(
                    [user_message("What colour is the shape?", [image])], session_id=session
                )
            ]
        )
        assert answer == "white"
        await client.delete_session(session)


# ---- toy-world accuracy gates through the real services, at the model card's settings

CARD_SETTINGS = {"steps": 25, "guidance_scale": 5.0, "sampler": "DPM++ 2M"}


def test_toyworld_diffusion_gate_through_the_service(up):
    """15 prompts x 4 seeds (one batch of 4 per prompt: seeds s..s+3): colour >= 98 %, shape >= 95 %."""
    _, addresses = up
    from lumiserve.toyworld import world

    colour_ok = shape_ok = total = 0
    with Client(addresses["gateway"], timeout=120) as client:
        for colour, shape in world.all_prompts():
            prompt = world.prompt_of(colour, shape)
            for image in client.generate_images(prompt, seed=100, num_images=4, **CARD_SETTINGS):
                reading = world.classify(image.convert("RGB"))
                colour_ok += reading.colour == colour
                shape_ok += reading.shape == shape
                total += 1
    assert total == 60
    assert colour_ok / total >= 0.98, f"colour {colour_ok}/{total}"
    assert shape_ok / total >= 0.95, f"shape {shape_ok}/{total}"


def test_toyworld_vlm_gate_through_the_service(up):
    """100 fresh renders: caption (CaptionBatch), colour and shape (Chat) exact match >= 98 % each."""
    _, addresses = up
    from lumiserve.toyworld import world

    rng = np.random.default_rng(2026)
    scenes = [world.render(rng=rng) for _ in range(100)]
    with Client(addresses["gateway"], timeout=120) as client:
        captions = {int(c.id): c.text for c in client.caption([image for image, _ in scenes])}
        correct = {"caption": sum(captions[i] == scene.caption for i, (_, scene) in enumerate(scenes))}
        for kind in ("colour", "shape"):
            correct[kind] = sum(
                client.ask([image], world.QUESTIONS[kind]) == scene.answer(kind) for image, scene in scenes
            )
    assert all(count >= 98 for count in correct.values()), correct


def test_toyworld_round_trip_through_the_gateway(up):
    """Generate each prompt (4 seeds), then ask what is in the image: the answer is the prompt >= 90 %."""
    _, addresses = up
    from lumiserve.toyworld import world

    pairs = []
    with Client(addresses["gateway"], timeout=120) as client:
        for colour, shape in world.all_prompts():
            prompt = world.prompt_of(colour, shape)
            for image in client.generate_images(prompt, seed=7, num_images=4, **CARD_SETTINGS):
                pairs.append((prompt, client.ask([image], world.QUESTIONS["caption"])))
    matches = sum(answer == prompt for prompt, answer in pairs)
    assert matches / len(pairs) >= 0.90, [pair for pair in pairs if pair[0] != pair[1]]


def test_clear_errors_when_not_running_or_the_key_is_wrong(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    result = cli("generate", "a red circle", address=closed)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lumiserve: cannot reach the gateway") and "lumiserve up" in last
    assert "Traceback" not in result.stderr
    gateway = (
        ServiceProcess(
            "gateway",
            [
                "--port",
                "0",
                "--metrics-port",
                "-1",
                "--static-backends",
                "diffusion=127.0.0.1:1",
                "--api-keys",
                f"sha256:{hash_key('right')}:team:user",
            ],
        )
        .start()
        .wait_ready()
    )
    try:
        wrong = cli("--api-key", "wrong", "status", address=gateway.address)
        assert wrong.returncode == 1
        assert wrong.stderr.strip() == "lumiserve: invalid API key; pass --api-key or set LUMISERVE_API_KEY"
    finally:
        gateway.stop()


def test_ctrl_c_stops_the_stack_and_releases_every_port(up):
    process, addresses = up
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=90) == 0
    time.sleep(0.2)
    for name in ("gateway", "registry", "diffusion", "vlm"):
        assert port_is_free(addresses[name]), f"{name} still holds {addresses[name]}"
