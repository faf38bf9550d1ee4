"""`lumiserve vlm` starts the service as a process: loads its models, serves, drains on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lumiserve.vision_language.v1 import vision_language_pb2 as pb
from lumiserve.vision_language.v1 import vision_language_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]


def test_lumiserve_vlm_serves_and_drains_on_sigterm(tiny_models, tmp_path):
    log = tmp_path / "vlm.log"
    command = [
        sys.executable, "-m", "lumiserve.cli", "vlm",
        "--port", "0", "--metrics-port", "-1", "--drain-grace-seconds", "2",
        "--models", f"tiny={tiny_models.llava}", "--torch-threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log.open("w") as stderr:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        port, deadline = None, time.monotonic() + 60
        while port is None and time.monotonic() < deadline and process.poll() is None:
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text())
            port = int(match.group(1)) if match else None
            time.sleep(0.1)
        assert port, log.read_text()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while (
                health.Check(health_pb2.HealthCheckRequest()).status != health_pb2.HealthCheckResponse.SERVING
            ):
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            stub = pb_grpc.VisionLanguageServiceStub(channel)
            request = pb.ChatRequest(
                messages=[pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text="hello")])],
                sampling=pb.SamplingParameters(max_new_tokens=3, min_new_tokens=3),
            )
            events = list(stub.Chat(request, timeout=30))
            assert events[-1].completion.usage.completion_tokens == 3
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_lumiserve_vlm_rejects_bad_settings():
    result = subprocess.run(
        [sys.executable, "-m", "lumiserve.cli", "vlm", "--models", "a=/x;dtype=fp7"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "dtype" in result.stderr and "--models" in result.stderr
