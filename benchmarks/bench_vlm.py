"""Vision-language service benchmark with the tiny LLaVA (random weights, built offline).

    .venv/bin/python benchmarks/bench_vlm.py [--threads 1] [--repeats 7] [--tokens 64]

Prints, as ratios measured in this one run (the machine is noisy: runs are interleaved, medians taken):
1. streaming tokens/s through the service over gRPC vs raw `generate` (target >= 0.9x); both run in
   processes of their own (the service as `lumiserve vlm`), so that both get the same treatment from
   the scheduler, with the same torch thread count;
2. 8 concurrent requests (batched by the service) vs the same 8 one by one (target >= 2x throughput);
3. session turn 2 with KV-cache reuse vs recomputing the whole history (stateless chat).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import grpc  # noqa: E402
import torch  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from PIL import Image  # noqa: E402

from lumiserve.common.v1 import common_pb2  # noqa: E402
from lumiserve.vision_language.v1 import vision_language_pb2 as pb  # noqa: E402
from lumiserve.vision_language.v1 import vision_language_pb2_grpc as pb_grpc  # noqa: E402

PROMPT = "What is in this image?"


def png(colour: tuple[int, int, int], size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def user(*parts: pb.ContentPart) -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, content=list(parts))


def image(colour) -> pb.ContentPart:
    return pb.ContentPart(image=common_pb2.Image(data=png(colour)))


def text(value: str) -> pb.ContentPart:
    return pb.ContentPart(text=value)


def start_service(model: Path, threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    command = [
        sys.executable, "-m", "lumiserve.cli", "vlm", "--port", "0", "--metrics-port", "-1",
        "--models", f"tiny={model}", "--torch-threads", str(threads), "--log-level", "INFO",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        match = re.search(r"listening on (127\.0\.0\.1:\d+)", log.read_text())
        if match:
            address = match.group(1)
            with grpc.insecure_channel(address) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                while (
                    health.Check(health_pb2.HealthCheckRequest()).status
                    != health_pb2.HealthCheckResponse.SERVING
                ):
                    time.sleep(0.05)
            return process, address
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"service did not start:\n{log.read_text()}")


async def stream(stub, request: pb.ChatRequest) -> tuple[float, pb.Completion]:
    start = time.perf_counter()
    completion = None
    async for event in stub.Chat(request):
        if event.final:
            completion = event.completion
    return time.perf_counter() - start, completion


def raw_worker(model_dir: str, tokens: int) -> None:
    """`--raw-worker`: the baseline, in a process of its own like the service. Each line on stdin runs
    one greedy `generate` of `tokens` tokens and prints its seconds."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_dir, use_safetensors=True).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    chat_text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    inputs = processor(
        text=chat_text,
        images=[Image.open(io.BytesIO(png((200, 40, 40)))).convert("RGB")],
        return_tensors="pt",
        add_special_tokens=False,
    )
    for _ in sys.stdin:
        start, cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        print(time.perf_counter() - start, time.process_time() - cpu, flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(args, model_dir: Path, address: str, service_pid: int) -> None:
    n = args.tokens
    command = [
        sys.executable,
        __file__,
        "--raw-worker",
        str(model_dir),
        "--tokens",
        str(n),
        "--threads",
        str(args.threads),
    ]
    # Two baseline processes: the second one against the first (an A/A ratio) shows how far two
    # processes doing the very same work drift apart on this machine.
    raws = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    raw_cpu: list[float] = []

    def raw_once(which: int = 0) -> float:
        raw = raws[which]
        raw.stdin.write("run\n")
        raw.stdin.flush()
        wall, cpu = map(float, raw.stdout.readline().split())
        if which == 0:
            raw_cpu.append(cpu)
        return wall

    sampling = pb.SamplingParameters(max_new_tokens=n, min_new_tokens=n)
    single = pb.ChatRequest(
        model="tiny", messages=[user(image((200, 40, 40)), text(PROMPT))], sampling=sampling
    )
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.VisionLanguageServiceStub(channel)
        raw_once(), raw_once(1)
        await stream(stub, single)  # warm-up
        raw_times, other_raw_times, service_times, service_cpu = [], [], [], 0.0
        raw_cpu.clear()
        for _ in range(args.repeats):  # interleaved: drift hits both sides alike
            raw_times.append(raw_once())
            other_raw_times.append(raw_once(1))
            cpu = cpu_seconds(service_pid)
            elapsed, completion = await stream(stub, single)
            service_cpu += cpu_seconds(service_pid) - cpu
            assert completion.usage.completion_tokens == n
            service_times.append(elapsed)
        raw_tps, service_tps = n / statistics.median(raw_times), n / statistics.median(service_times)
        noise = statistics.median(raw_times) / statistics.median(other_raw_times)
        # CPU time per token does not depend on how the scheduler shares the cores with other work
        cpu_ratio = sum(raw_cpu) / service_cpu if service_cpu else float("nan")

        batch = [
            pb.ChatRequest(
                model="tiny",
                messages=[user(image((30 * i, 90, 200 - 20 * i)), text(PROMPT + " " * i))],
                sampling=sampling,
            )
            for i in range(8)
        ]
        sequential_times, concurrent_times = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for request in batch:
                await stream(stub, request)
            sequential_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            await asyncio.gather(*(stream(stub, request) for request in batch))
            concurrent_times.append(time.perf_counter() - start)
        batching = statistics.median(sequential_times) / statistics.median(concurrent_times)

        # A long first turn (4 images, a long question), then a short second turn.
        first = user(*[image((60 * i, 120, 30)) for i in range(4)], text("Describe every picture. " * 12))
        reply_sampling = pb.SamplingParameters(max_new_tokens=16, min_new_tokens=16)
        second = user(text("And the second one?"))
        reuse_times, recompute_times, reuse_ttft, recompute_ttft, cached = [], [], [], [], []
        for _ in range(args.repeats):
            session = (await stub.CreateSession(pb.CreateSessionRequest(model="tiny"))).session.session_id
            _, done = await stream(
                stub, pb.ChatRequest(session_id=session, messages=[first], sampling=reply_sampling)
            )
            history = [first, pb.Message(role=pb.ROLE_ASSISTANT, content=[text(done.text)]), second]
            elapsed, turn = await stream(
                stub, pb.ChatRequest(session_id=session, messages=[second], sampling=reply_sampling)
            )
            reuse_times.append(elapsed)
            reuse_ttft.append(turn.usage.time_to_first_token_seconds)
            cached.append(turn.usage.cached_prompt_tokens / turn.usage.prompt_tokens)
            elapsed, full = await stream(
                stub, pb.ChatRequest(model="tiny", messages=history, sampling=reply_sampling)
            )
            recompute_times.append(elapsed)
            recompute_ttft.append(full.usage.time_to_first_token_seconds)
            await stub.DeleteSession(pb.DeleteSessionRequest(session_id=session))
    for raw in raws:
        raw.stdin.close()
        raw.wait(timeout=30)

    print(f"torch threads {args.threads}, {n} tokens, median of {args.repeats} interleaved runs")
    print(f"raw generate (own process)   {raw_tps:8.1f} tokens/s")
    print(f"service, streamed over gRPC  {service_tps:8.1f} tokens/s")
    print(f"  ratio service / raw        {service_tps / raw_tps:8.2f}x   (target >= 0.9x), wall clock")
    print(f"  A/A: raw process 2 / 1     {noise:8.2f}x   (the same work in two processes: the noise)")
    print(
        f"  ratio by CPU time          {cpu_ratio:8.2f}x   (raw CPU s / service process CPU s for the same "
        f"tokens: {sum(raw_cpu):.3f} / {service_cpu:.3f})"
    )
    print(
        f"8 requests one by one        {statistics.median(sequential_times) * 1000:8.1f} ms; "
        f"concurrently (batched) {statistics.median(concurrent_times) * 1000:.1f} ms"
    )
    print(f"  batching throughput ratio  {batching:8.2f}x   (target >= 2x)")
    print(
        f"session turn 2: {statistics.median(cached) * 100:.0f}% of the prompt from the KV cache; "
        f"time to first token {statistics.median(reuse_ttft) * 1000:.1f} ms vs "
        f"{statistics.median(recompute_ttft) * 1000:.1f} ms recomputed"
    )
    ttft_ratio = statistics.median(recompute_ttft) / statistics.median(reuse_ttft)
    turn_ratio = statistics.median(recompute_times) / statistics.median(reuse_times)
    print(
        f"  KV reuse speed-up          {ttft_ratio:8.2f}x time to first token, {turn_ratio:.2f}x whole turn"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and in the service")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--raw-worker", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.raw_worker:
        raw_worker(args.raw_worker, args.tokens)
        return 0
    from lumiserve.testing.tiny_models import build_tiny_llava

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "tiny-llava"
        build_tiny_llava(model_dir)
        process, address = start_service(model_dir, args.threads, Path(tmp) / "service.log")
        try:
            asyncio.run(measure(args, model_dir, address, process.pid))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
