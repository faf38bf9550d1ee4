"""Gateway relay overhead: the same calls straight to a backend and through the gateway, in one run.

    python benchmarks/bench_gateway.py [--unary 2000] [--events 2000] [--streams 1,32]

The backend is an event source (a DiffusionService that answers GetJob at once and streams
`--events` progress events per Generate as fast as it can) so that the figures measure the relay,
not a model. Backend and gateway run as separate processes; the client runs here.
Targets (DESIGN.md §5): ≤ 1 ms added p50 and ≤ 3 ms p99 per unary call; streamed events ≥ 0.9× the
direct throughput at 32 concurrent streams; gateway idle RSS ≤ 150 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lumiserve.diffusion.v1 import diffusion_pb2, diffusion_pb2_grpc  # noqa: E402
from lumiserve.processes import ServiceProcess, rss_mb  # noqa: E402


class EventSource(diffusion_pb2_grpc.DiffusionServiceServicer):
    async def GetJob(self, request, context):
        return diffusion_pb2.GetJobResponse(job=diffusion_pb2.Job(job_id=request.job_id))

    async def Generate(self, request, context):
        total = request.steps
        for step in range(1, total + 1):
            yield diffusion_pb2.GenerateResponse(
                job_id=request.job_id, progress=diffusion_pb2.Progress(step=step, total_steps=total)
            )
        yield diffusion_pb2.GenerateResponse(job_id=request.job_id, result=diffusion_pb2.Result(), final=True)


async def serve_backend(ready_file: Path) -> None:
    from services.common.server import ServiceBinding, ServiceHost, run_until_signal
    from services.common.settings import ServerSettings

    settings = ServerSettings(port=0, metrics_port=-1, ready_file=ready_file)
    host = ServiceHost(settings, [ServiceBinding.of(diffusion_pb2_grpc, "DiffusionService", EventSource())])
    await run_until_signal(host)


def start_backend() -> tuple[object, int]:
    import subprocess
    import tempfile

    ready = Path(tempfile.mkdtemp()) / "ready.json"
    process = subprocess.Popen([sys.executable, __file__, "--serve-backend", str(ready)])
    while not ready.exists():
        if process.poll() is not None:
            sys.exit("backend failed to start")
        time.sleep(0.05)
    return process, json.loads(ready.read_text())["port"]


async def unary_latencies(address: str, calls: int) -> list[float]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = diffusion_pb2_grpc.DiffusionServiceStub(channel)
        request = diffusion_pb2.GetJobRequest(job_id="bench")
        for _ in range(50):  # warm up
            await stub.GetJob(request)
        latencies = []
        for _ in range(calls):
            start = time.perf_counter()
            await stub.GetJob(request)
            latencies.append(time.perf_counter() - start)
        return latencies


async def stream_throughput(address: str, streams: int, events: int) -> float:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = diffusion_pb2_grpc.DiffusionServiceStub(channel)

        async def one(index: int) -> int:
            request = diffusion_pb2.GenerateRequest(model="bench", job_id=f"j{index}", steps=events)
            return sum([1 async for _ in stub.Generate(request)])

        await one(-1)  # warm up
        start = time.perf_counter()
        received = sum(await asyncio.gather(*(one(i) for i in range(streams))))
        return received / (time.perf_counter() - start)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


async def run(args: argparse.Namespace) -> None:
    backend, backend_port = start_backend()
    direct = f"127.0.0.1:{backend_port}"
    gateway = (
        ServiceProcess(
            "gateway",
            [
                "--port",
                "0",
                "--metrics-port",
                "0",
                "--auth-disabled",
                "true",
                "--static-backends",
                f"diffusion={direct}",
                "--log-level",
                "WARNING",
                "--tenant-requests-per-second",
                "1000000",
                "--tenant-burst",
                "1000000",
                "--tenant-max-concurrency",
                "10000",
            ],
        )
        .start()
        .wait_ready()
    )
    try:
        time.sleep(1.0)
        print(f"gateway idle RSS: {rss_mb(gateway.process.pid):.1f} MB (target <= 150)")
        for rnd in range(args.rounds):
            d = await unary_latencies(direct, args.unary)
            g = await unary_latencies(gateway.address, args.unary)
            p50 = (percentile(g, 50) - percentile(d, 50)) * 1000
            p99 = (percentile(g, 99) - percentile(d, 99)) * 1000
            print(
                f"[round {rnd + 1}] unary GetJob: direct p50 {percentile(d, 50) * 1000:.3f} ms p99 "
                f"{percentile(d, 99) * 1000:.3f} ms | gateway p50 {percentile(g, 50) * 1000:.3f} ms p99 "
                f"{percentile(g, 99) * 1000:.3f} ms | added p50 {p50:.3f} ms (target <= 1), "
                f"p99 {p99:.3f} ms (target <= 3)"
            )
            for streams in args.streams:
                d_rate = await stream_throughput(direct, streams, args.events)
                g_rate = await stream_throughput(gateway.address, streams, args.events)
                print(
                    f"[round {rnd + 1}] {streams:>2} streams x {args.events} events: "
                    f"direct {d_rate:,.0f} ev/s, gateway {g_rate:,.0f} ev/s, "
                    f"ratio {g_rate / d_rate:.2f} (target >= 0.9)"
                )
    finally:
        gateway.stop()
        backend.terminate()
        backend.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--unary", type=int, default=2000, help="unary calls per measurement")
    parser.add_argument("--events", type=int, default=2000, help="events per stream")
    parser.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve-backend", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_backend:
        asyncio.run(serve_backend(args.serve_backend))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
