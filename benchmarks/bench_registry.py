"""Model registry: Resolve latency, Watch fan-out and idle memory, on SQLite and PostgreSQL.

    python benchmarks/bench_registry.py [--resolves 2000] [--subscribers 50] [--changes 100]
                                        [--backends sqlite,postgresql]

Each backend gets a fresh database and a registry process (`python -m services.model_registry.main`);
the client runs here. The catalog holds 50 models, 20 live instances (10 with the resolved model
loaded, on four hardware types) and 8 compiled artifacts.
- Resolve: sequential unary calls, latency p50/p99 as the client sees it (one warm-up pass first).
- Watch fan-out: `--subscribers` streams resume from a snapshot; then `--changes` models are created one
  after another; the delivery latency of each change to each subscriber (write sent -> event
  received) and the total deliveries per second.
- Idle RSS of the registry process: after start (seeded, no clients) and after the runs.
Target (DESIGN.md §5): idle RSS ≤ 150 MB. PostgreSQL is skipped when the server is not reachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lumiserve.common.v1 import common_pb2  # noqa: E402
from lumiserve.model_registry.v1 import model_registry_pb2 as pb  # noqa: E402
from lumiserve.model_registry.v1 import model_registry_pb2_grpc as pb_grpc  # noqa: E402
from lumiserve.processes import rss_mb  # noqa: E402
from services.model_registry import testing  # noqa: E402

MODEL = "llava-hf/llava-1.5-7b-hf"
HARDWARE = [("nvidia-h100", "sm_90"), ("nvidia-l4", "sm_89"), ("amd-mi300", "gfx942"), ("cpu", "x86_64")]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def model(model_id: str) -> pb.Model:
    return pb.Model(
        id=model_id,
        family=common_pb2.MODEL_FAMILY_VISION_LANGUAGE,
        source=model_id,
        tasks=["chat", "vqa"],
        variants=[
            pb.Variant(name="7b", size="7b", precision=common_pb2.PRECISION_FP16, context_window=4096),
            pb.Variant(name="7b-trt", size="7b", backend=common_pb2.BACKEND_TENSORRT, context_window=4096),
        ],
    )


async def populate(stub: pb_grpc.ModelRegistryServiceStub) -> None:
    admin, instance = testing.ADMIN, testing.INSTANCE
    await stub.CreateModel(pb.CreateModelRequest(model=model(MODEL)), metadata=admin)
    for n in range(49):
        await stub.CreateModel(pb.CreateModelRequest(model=model(f"bench/model-{n:02d}")), metadata=admin)
    for n, (_, arch) in enumerate(HARDWARE * 2):
        artifact = pb.Artifact(
            model_id=MODEL if n < 4 else f"bench/model-{n:02d}",
            variant="7b-trt",
            backend=common_pb2.BACKEND_TENSORRT,
            gpu_arch=arch,
            size_bytes=1 << 30,
            checksum="sha256:" + f"{n:02x}" * 32,
            uri=f"s3://engines/{n}.plan",
        )
        await stub.CreateArtifact(pb.CreateArtifactRequest(artifact=artifact), metadata=admin)
    for n in range(20):
        hardware, arch = HARDWARE[n % len(HARDWARE)]
        loaded = [pb.LoadedModelRef(model_id=MODEL, variant="7b-trt")] if n % 2 == 0 else []
        pod = pb.Instance(
            id=f"vlm-{n:02d}",
            endpoint=f"10.0.0.{n}:50051",
            hardware=common_pb2.Hardware(type=hardware, arch=arch),
            families=[common_pb2.MODEL_FAMILY_VISION_LANGUAGE],
            loaded_models=loaded,
            capacity=8,
        )
        await stub.RegisterInstance(pb.RegisterInstanceRequest(instance=pod), metadata=instance)
        await stub.Heartbeat(
            pb.HeartbeatRequest(
                instance_id=pod.id, load=pb.InstanceLoad(queue_depth=n % 5), loaded_models=loaded
            ),
            metadata=instance,
        )


async def resolve_latency(stub: pb_grpc.ModelRegistryServiceStub, count: int) -> dict[str, float]:
    request = pb.ResolveRequest(model=MODEL, task="chat", hardware_preference=["nvidia-h100", "nvidia-l4"])
    answer = await stub.Resolve(request)
    assert len(answer.instances) == 10 and answer.instances[0].HasField("artifact"), answer
    for _ in range(count // 10):  # warm-up
        await stub.Resolve(request)
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        await stub.Resolve(request)
        latencies.append(time.perf_counter() - start)
    return {
        "resolve_p50_ms": 1000 * statistics.median(latencies),
        "resolve_p99_ms": 1000 * percentile(latencies, 0.99),
        "resolve_per_s": count / sum(latencies),
    }


async def watch_fan_out(
    stub: pb_grpc.ModelRegistryServiceStub, subscribers: int, changes: int
) -> dict[str, float]:
    sent: dict[str, float] = {}
    received: list[list[tuple[str, float]]] = [[] for _ in range(subscribers)]
    synced = asyncio.Semaphore(0)

    async def subscribe(index: int) -> None:
        stream = stub.Watch(pb.WatchRequest())
        async for change in stream:
            if change.change_type == pb.CHANGE_TYPE_SYNCED:
                synced.release()
            elif change.WhichOneof("object") == "model" and change.model.id.startswith("fan/"):
                received[index].append((change.model.id, time.perf_counter()))
                if len(received[index]) == changes:
                    stream.cancel()
                    return

    tasks = [asyncio.create_task(subscribe(i)) for i in range(subscribers)]
    for _ in range(subscribers):
        await synced.acquire()
    start = time.perf_counter()
    for n in range(changes):
        model_id = f"fan/model-{n:03d}"
        sent[model_id] = time.perf_counter()
        await stub.CreateModel(pb.CreateModelRequest(model=model(model_id)), metadata=testing.ADMIN)
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    elapsed = time.perf_counter() - start
    for events in received:  # every subscriber got every change, in order
        assert [model_id for model_id, _ in events] == sorted(sent), (
            "a subscriber missed or reordered changes"
        )
    delays = [at - sent[model_id] for events in received for model_id, at in events]
    return {
        "watch_delivery_p50_ms": 1000 * statistics.median(delays),
        "watch_delivery_p99_ms": 1000 * percentile(delays, 0.99),
        "watch_deliveries_per_s": subscribers * changes / elapsed,
        "watch_writes_per_s": changes / elapsed,
    }


async def bench(backend: str, database: str, directory: Path, args: argparse.Namespace) -> dict[str, float]:
    process = testing.RegistryProcess(database, directory, backend)
    try:
        address = await process.ready()
        await asyncio.sleep(1.0)
        figures = {"idle_rss_mb_start": rss_mb(process.process.pid)}
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.ModelRegistryServiceStub(channel)
            await populate(stub)
            figures |= await resolve_latency(stub, args.resolves)
            figures |= await watch_fan_out(stub, args.subscribers, args.changes)
        await asyncio.sleep(1.0)
        figures["idle_rss_mb_after"] = rss_mb(process.process.pid)
        return figures
    finally:
        process.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolves", type=int, default=2000)
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        for backend in args.backends.split(","):
            if backend == "postgresql" and (reason := testing.postgres_unavailable_reason()):
                print(f"postgresql: skipped ({reason})")
                continue
            database = stack.enter_context(testing.database_url(backend, Path(tmp)))
            results[backend] = await bench(backend, database, Path(tmp), args)
    names = list(next(iter(results.values())))
    load = f"{args.resolves} resolves, {args.subscribers} subscribers x {args.changes} changes"
    print(f"\nregistry benchmark: {load}")
    print(f"{'figure':26}" + "".join(f"{backend:>14}" for backend in results))
    for name in names:
        print(f"{name:26}" + "".join(f"{results[backend][name]:14.2f}" for backend in results))
    worst_rss = max(max(r["idle_rss_mb_start"], r["idle_rss_mb_after"]) for r in results.values())
    print(f"idle RSS target <= 150 MB: {'met' if worst_rss <= 150 else 'MISSED'} (worst {worst_rss:.1f} MB)")
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())
