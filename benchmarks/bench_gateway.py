"""Gateway relay overhead: the same calls straight to a backend and through the gateway, in one run.

    python benchmarks/bench_gateway.py [--unary 2000] [--events 2000] [--streams 1,32] [--rate 100]
                                       [--seconds 3] [--rounds 2] [--no-sweep] [--model-streams 32]
                                       [--no-models]

The backend is an event source: a DiffusionService that answers GetJob at once and streams `steps`
progress events per Generate, either as fast as it can or paced at the rate (events/s) the request's
prompt carries, on an absolute schedule (event k is due k/rate after the call starts, so a late
wake-up does not delay the events after it). Backend and gateway run as separate processes; the
client runs here. Rows, direct vs through the gateway:

- unary GetJob: client-side latency p50 / p99 and what the gateway adds.
- capacity (unpaced): `--events` events per stream as fast as the backend sends them. Backend,
  gateway and client are then all CPU-bound on the same cores, and relaying an event costs the
  gateway about what sending it costs the backend plus what receiving it costs the client, so this
  ratio measures the machine as much as the relay. The CPU time per event of the backend (direct)
  and of the gateway (relayed) is printed with it.
- paced: each stream at `--rate` events/s for `--seconds` (real services: the diffusion service emits
  ~10-50 events/s per stream on a GPU, the VLM ~50-100 tokens/s). Delivered events/s, and each event's
  lag: how much later than its stream's least-delayed event it arrived, against the schedule (p50 /
  p99 over all events of all streams). Call set-up and a constant transit time are not in it (the
  unary row has those); queueing and falling behind are, so the gateway's added per-event latency
  under load is the difference of the lags.
- saturation sweep: the most streams of `--streams`, per-stream rate doubled from `--rate` until the
  gateway delivers < 0.9x direct, then the midpoint of the last pass and the first miss: the highest
  aggregate rate the gateway relays at >= 0.9x direct. It stops early if direct itself falls below
  0.9x the offered rate (then the backend and client saturate the machine before the gateway does).
  The lag degrades first: a backlog builds up in the gateway (lag of 100s of ms) well before it
  lowers the rate delivered over a few seconds, so the added lag at the saturation point is printed
  with it and the sweep rows show where it starts.

- model services: the product's own backends (the toy-world diffusion and VLM services, one torch
  thread each as `lumiserve up` runs them here), `--model-streams` concurrent Generate / Chat calls
  at the rate the models produce events, direct vs through a gateway, interleaved over `--rounds`:
  delivered events/s (progress events / tokens) and the median ratio. `--no-models` skips it.

Targets (DESIGN.md §5): <= 1 ms added p50 and <= 3 ms p99 per unary call; streamed events >= 0.9x the
direct throughput at 32 concurrent streams; gateway idle RSS <= 150 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lumiserve.common.v1 import common_pb2  # noqa: E402
from lumiserve.diffusion.v1 import diffusion_pb2, diffusion_pb2_grpc  # noqa: E402
from lumiserve.processes import ServiceProcess, rss_mb  # noqa: E402
from lumiserve.vision_language.v1 import vision_language_pb2 as vl_pb2  # noqa: E402
from lumiserve.vision_language.v1 import vision_language_pb2_grpc as vl_grpc  # noqa: E402

TARGET_RATIO = 0.9
MAX_SWEEP_RATE = 12_800.0  # events/s per stream; far beyond any model service


class EventSource(diffusion_pb2_grpc.DiffusionServiceServicer):
    async def GetJob(
        self, request: diffusion_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> diffusion_pb2.GetJobResponse:
        return diffusion_pb2.GetJobResponse(job=diffusion_pb2.Job(job_id=request.job_id))

    async def Generate(
        self, request: diffusion_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[diffusion_pb2.GenerateResponse]:
        total = request.steps
        interval = 1 / float(request.prompt) if request.prompt else 0.0  # the prompt carries the rate
        loop = asyncio.get_running_loop()
        start = loop.time()
        for step in range(1, total + 1):
            if interval:  # sleep until this event's due time, computed from the start: no drift
                delay = start + step * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), NaN where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


@dataclass
class Streamed:
    """One streaming measurement over all streams."""

    events_per_second: float  # progress events delivered, all streams together
    lag: list[float]  # paced: seconds each event arrived after its stream's least-delayed one; else empty
    cpu_per_event: dict[str, float]  # process name -> CPU seconds per delivered event


async def stream(address: str, streams: int, events: int, rate: float, pids: dict[str, int]) -> Streamed:
    """`streams` concurrent Generate calls of `events` events each, at `rate` events/s (0: unpaced)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = diffusion_pb2_grpc.DiffusionServiceStub(channel)

        async def one(job: str, events: int, rate: float) -> list[float]:
            request = diffusion_pb2.GenerateRequest(
                model="bench", job_id=job, steps=events, prompt=f"{rate:g}" if rate else ""
            )
            return [time.perf_counter() async for _ in stub.Generate(request)]

        await one("warm-up", min(events, 200), 0.0)
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        begin = time.perf_counter()
        runs = await asyncio.gather(*(one(f"j{i}", events, rate) for i in range(streams)))
        end = max(arrivals[events - 1] for arrivals in runs)  # the last progress event
        cpu = {name: (cpu_seconds(pid) - cpu_before[name]) / (streams * events) for name, pid in pids.items()}
        lag = []
        for arrivals in runs if rate else ():
            offsets = [arrival - k / rate for k, arrival in enumerate(arrivals[:events], 1)]
            best = min(offsets)
            lag += [offset - best for offset in offsets]
        return Streamed(streams * events / (end - begin), lag, cpu)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


class Paced(NamedTuple):
    ratio: float  # gateway / direct delivered events/s
    direct_share: float  # direct delivered / offered events/s
    added_lag_ms: tuple[float, float]  # gateway's lag p50 and p99 minus direct's


def verdict(ratio: float) -> str:
    return f"meets >= {TARGET_RATIO}" if ratio >= TARGET_RATIO else f"BELOW {TARGET_RATIO}"


def lag_ms(measured: Streamed) -> tuple[float, float]:
    """p50 and p99 of the paced events' lag, in ms."""
    return percentile(measured.lag, 50) * 1000, percentile(measured.lag, 99) * 1000


class Bench:
    """The rows, each measured direct to the backend and through the gateway."""

    def __init__(self, backend_pid: int, direct: str, gateway_pid: int, gateway: str) -> None:
        self.direct, self.gateway = direct, gateway
        self.pids = {"backend": backend_pid, "gateway": gateway_pid}

    async def compare(self, streams: int, events: int, rate: float) -> tuple[Streamed, Streamed, float]:
        d = await stream(self.direct, streams, events, rate, self.pids)
        g = await stream(self.gateway, streams, events, rate, self.pids)
        return d, g, g.events_per_second / d.events_per_second

    async def unary(self, tag: str, calls: int) -> None:
        d = await unary_latencies(self.direct, calls)
        g = await unary_latencies(self.gateway, calls)
        p50 = (percentile(g, 50) - percentile(d, 50)) * 1000
        p99 = (percentile(g, 99) - percentile(d, 99)) * 1000
        print(
            f"{tag} unary GetJob: direct p50 {percentile(d, 50) * 1000:.3f} ms p99 "
            f"{percentile(d, 99) * 1000:.3f} ms | gateway p50 {percentile(g, 50) * 1000:.3f} ms p99 "
            f"{percentile(g, 99) * 1000:.3f} ms | added p50 {p50:.3f} ms (target <= 1), "
            f"p99 {p99:.3f} ms (target <= 3)"
        )

    async def capacity(self, tag: str, streams: int, events: int) -> float:
        """One unpaced row; returns gateway / direct delivered events/s."""
        d, g, ratio = await self.compare(streams, events, 0.0)
        print(
            f"{tag} capacity (unpaced) {streams:>2} streams x {events} events: "
            f"direct {d.events_per_second:,.0f} ev/s, gateway {g.events_per_second:,.0f} ev/s, "
            f"ratio {ratio:.2f} ({verdict(ratio)}) | CPU per event: backend sending "
            f"{d.cpu_per_event['backend'] * 1e6:.0f} us, gateway relaying "
            f"{g.cpu_per_event['gateway'] * 1e6:.0f} us"
        )
        return ratio

    async def paced(self, tag: str, streams: int, rate: float, seconds: float) -> Paced:
        """One paced row."""
        events = max(int(rate * seconds), 2)
        d, g, ratio = await self.compare(streams, events, rate)
        offered = streams * rate
        (d50, d99), (g50, g99) = lag_ms(d), lag_ms(g)
        print(
            f"{tag} paced {streams:>2} streams x {rate:,.0f} ev/s = {offered:,.0f} ev/s offered: "
            f"direct {d.events_per_second:,.0f} ev/s, lag p50 {d50:.2f} ms p99 {d99:.2f} ms | "
            f"gateway {g.events_per_second:,.0f} ev/s, lag p50 {g50:.2f} ms p99 {g99:.2f} ms | "
            f"ratio {ratio:.2f} ({verdict(ratio)}), added p50 {g50 - d50:.2f} ms p99 {g99 - d99:.2f} ms"
        )
        return Paced(ratio, d.events_per_second / offered, (g50 - d50, g99 - d99))

    async def sweep(self, streams: int, rate: float, seconds: float) -> None:
        """Doubles the per-stream rate until the gateway falls below 0.9x direct, then bisects once."""
        passed: tuple[float, Paced] | None = None
        missed = 0.0
        while rate <= MAX_SWEEP_RATE:
            row = await self.paced("[sweep]", streams, rate, seconds)
            if row.ratio < TARGET_RATIO:
                missed = rate
                break
            passed = rate, row
            if row.direct_share < TARGET_RATIO:
                print(
                    f"[sweep] direct delivers {row.direct_share:.2f}x the offered rate: the machine "
                    f"saturates before the gateway falls below {TARGET_RATIO}x"
                )
                break
            rate *= 2
        if passed and missed:
            middle = (passed[0] + missed) / 2
            row = await self.paced("[sweep]", streams, middle, seconds)
            passed, missed = ((middle, row), missed) if row.ratio >= TARGET_RATIO else (passed, middle)
        below = f"; below it at {streams * missed:,.0f} ev/s" if missed else ""
        if passed is None:
            print(f"gateway saturation point: below {TARGET_RATIO}x direct at every rate tried{below}")
            return
        rate, row = passed
        print(
            f"gateway saturation point: >= {TARGET_RATIO}x direct up to {streams * rate:,.0f} ev/s "
            f"({streams} streams x {rate:,.0f}; added lag there p50 {row.added_lag_ms[0]:.2f} ms, "
            f"p99 {row.added_lag_ms[1]:.2f} ms){below}"
        )


def summary(ratios: dict[str, list[float]]) -> None:
    """Which rows met the streaming target in every round, which in none, which in some."""
    groups: dict[str, list[str]] = {"every round": [], "no round": [], "some rounds": []}
    for row, values in ratios.items():
        met = sum(ratio >= TARGET_RATIO for ratio in values)
        groups["every round" if met == len(values) else "no round" if not met else "some rounds"].append(row)
    for group, rows in groups.items():
        if rows:
            print(f"gateway >= {TARGET_RATIO}x direct in {group}: {'; '.join(rows)}")


def start_gateway(static_backends: str) -> ServiceProcess:
    """A gateway in front of fixed backends, admission limits out of the way."""
    flags = ["--port", "0", "--metrics-port", "0", "--auth-disabled", "true", "--log-level", "WARNING"]
    flags += ["--static-backends", static_backends, "--tenant-requests-per-second", "1000000"]
    flags += ["--tenant-burst", "1000000", "--tenant-max-concurrency", "10000"]
    return ServiceProcess("gateway", flags).start().wait_ready()


# -- the product's own backends


def start_model_services() -> dict[str, ServiceProcess]:
    """The toy-world diffusion and VLM services, one torch thread each (as `lumiserve up` sizes them
    on 2 cores)."""
    common = ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1", "--log-level", "WARNING"]
    models = ROOT / "models"
    toy_sd, toy_llava = models / "toyworld-sd", models / "toyworld-llava"
    services = {
        "diffusion": ServiceProcess(
            "diffusion", [*common, "--models", f"toyworld-sd={toy_sd}", "--num-threads", "1"]
        ),
        "vision_language": ServiceProcess(
            "vlm",
            [*common, "--models", f"toyworld-llava={toy_llava};family=toyworld", "--torch-threads", "1"],
        ),
    }
    for service in services.values():
        service.env["HF_HUB_OFFLINE"] = "1"
        service.start()
    return {family: service.wait_ready() for family, service in services.items()}


def red_circle_png() -> bytes:
    import io

    from lumiserve.toyworld.world import render

    image, _ = render("red", "circle")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def model_events_per_second(address: str, family: str, streams: int, image: bytes) -> float:
    """Events delivered per second over `streams` concurrent calls: Generate (queued, started, a
    progress event per step, result) or Chat (a token per event) at the model's own pace."""
    async with grpc.aio.insecure_channel(address) as channel:
        if family == "diffusion":
            diffusion = diffusion_pb2_grpc.DiffusionServiceStub(channel)

            def call(seed: int) -> grpc.aio.UnaryStreamCall:
                request = diffusion_pb2.GenerateRequest(
                    model="toyworld-sd", prompt="a red circle", steps=20, seed=seed
                )
                return diffusion.Generate(request)
        else:
            vlm = vl_grpc.VisionLanguageServiceStub(channel)
            question = vl_pb2.Message(
                role=vl_pb2.ROLE_USER,
                content=[
                    vl_pb2.ContentPart(image=common_pb2.Image(data=image)),
                    vl_pb2.ContentPart(text="What is in the picture?"),
                ],
            )
            sampling = vl_pb2.SamplingParameters(max_new_tokens=64, min_new_tokens=64, temperature=0)

            def call(seed: int) -> grpc.aio.UnaryStreamCall:
                return vlm.Chat(
                    vl_pb2.ChatRequest(model="toyworld-llava", messages=[question], sampling=sampling)
                )

        async def one(seed: int) -> int:
            return sum([1 async for _ in call(seed)])

        await one(0)  # warm-up: connection, first-call paths
        start = time.perf_counter()
        counts = await asyncio.gather(*(one(seed) for seed in range(streams)))
        return sum(counts) / (time.perf_counter() - start)


async def model_rows(streams: int, rounds: int) -> None:
    services = start_model_services()
    gateway = start_gateway(",".join(f"{family}={s.address}" for family, s in services.items()))
    image = red_circle_png()
    try:
        for family, service in services.items():
            direct, relayed = [], []
            for _ in range(rounds):  # interleaved: drift hits both alike
                direct.append(await model_events_per_second(service.address, family, streams, image))
                relayed.append(await model_events_per_second(gateway.address, family, streams, image))
            ratio = statistics.median(g / d for g, d in zip(relayed, direct, strict=True))
            print(
                f"model service {family} (toy-world), {streams} streams: direct "
                f"{statistics.median(direct):,.0f} ev/s, gateway {statistics.median(relayed):,.0f} ev/s, "
                f"median ratio of {rounds} rounds {ratio:.2f} ({verdict(ratio)})"
            )
    finally:
        gateway.stop()
        for service in services.values():
            service.stop()


async def run(args: argparse.Namespace) -> None:
    backend, backend_port = start_backend()
    direct = f"127.0.0.1:{backend_port}"
    gateway = start_gateway(f"diffusion={direct}")
    try:
        time.sleep(1.0)
        print(f"gateway idle RSS: {rss_mb(gateway.process.pid):.1f} MB (target <= 150)")
        bench = Bench(backend.pid, direct, gateway.process.pid, gateway.address)
        ratios: dict[str, list[float]] = {}
        for rnd in range(args.rounds):
            tag = f"[round {rnd + 1}]"
            await bench.unary(tag, args.unary)
            for streams in args.streams:
                ratio = await bench.capacity(tag, streams, args.events)
                ratios.setdefault(f"capacity (unpaced) {streams} streams", []).append(ratio)
            for streams in args.streams:
                ratio = (await bench.paced(tag, streams, args.rate, args.seconds)).ratio
                ratios.setdefault(f"paced {streams} streams x {args.rate:,.0f} ev/s", []).append(ratio)
        summary(ratios)
        if args.sweep:
            await bench.sweep(max(args.streams), args.rate, args.seconds)
    finally:
        gateway.stop()
        backend.terminate()
        backend.wait()
    if args.models:
        await model_rows(args.model_streams, max(args.rounds, 3))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--unary", type=int, default=2000, help="unary calls per measurement")
    parser.add_argument("--events", type=int, default=2000, help="events per stream, capacity rows")
    parser.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32])
    parser.add_argument("--rate", type=float, default=100.0, help="events/s per stream, paced rows")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of a paced measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the saturation sweep")
    parser.add_argument("--model-streams", type=int, default=32, help="concurrent calls, model-service rows")
    parser.add_argument("--no-models", dest="models", action="store_false", help="skip the model services")
    parser.add_argument("--serve-backend", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_backend:
        asyncio.run(serve_backend(args.serve_backend))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
