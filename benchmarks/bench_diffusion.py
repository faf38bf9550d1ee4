"""Diffusion service overhead and batching, measured in one run on the tiny SD model (not a test).

    .venv/bin/python benchmarks/bench_diffusion.py [--threads 1] [--repeats 100] [--engine process|thread]
                                                  [--client process|inline]

1. The same txt2img call (64x64, 8 steps, a seed) three ways, interleaved round by round (rotating
   the order) so drift hits all alike: diffusers in-process on the loaded pipeline (baseline, run
   twice per round: the A/A ratio shows the machine's noise); the service through gRPC on 127.0.0.1
   with previews off; the service with a preview every step. Prints medians, the median time each
   adds to the baseline in its round (the fixed cost, which does not scale with the machine's speed)
   and the median (and interquartile range) of per-round ratios with the median's 95% bootstrap
   interval (DESIGN §5 targets: <= 1.05x and <= 1.15x; "within this run's noise" when the interval
   holds the target).
2. Batching: 8 compatible requests sent at once vs the same 8 one by one (target >= 1.5x throughput).

The service runs in this process, its data plane in the engine process as `lumiserve diffusion` runs
it (`--engine thread`: in this process, to see what the engine saves); the baseline runs on the
service's device thread between jobs (same OS thread, same torch settings: thread placement on this
shared machine otherwise skews it). The gRPC client runs in a separate process by default, as real
clients do; `--client inline` puts it on the service's own event loop instead, which adds the
client's work to the service process. This machine is noisy: compare only ratios from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from lumiserve.diffusion.v1 import diffusion_pb2 as pb
from lumiserve.diffusion.v1 import diffusion_pb2_grpc

SIZE, STEPS, PROMPT, GUIDANCE = 64, 8, "a red circle on a dark background", 7.0


def run_baseline(plane, seed: int) -> float:
    """The diffusers call the service makes for the request below, with diffusers' own defaults, on
    the pipeline the service loaded (run on its device thread, wherever the data plane lives)."""
    import torch

    pipe = plane.cache.get("bench").pipe
    start = time.perf_counter()
    pipe(
        prompt=PROMPT,
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        generator=torch.Generator().manual_seed(seed),
    )
    return time.perf_counter() - start


def request(seed: int, previews: bool) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model="bench",
        prompt=PROMPT,
        width=SIZE,
        height=SIZE,
        steps=STEPS,
        guidance_scale=GUIDANCE,
        seed=seed,
        preview=pb.PreviewOptions(every_n_steps=1 if previews else 0),
    )


async def generate(stub, seed: int, previews: bool) -> None:
    final = None
    async for event in stub.Generate(request(seed, previews)):
        final = event
    assert final is not None and final.final and final.result.images


async def timed(stub, seeds: list[int], previews: bool, together: bool) -> float:
    """Seconds for the requests, sent one after another or all at once."""
    start = time.perf_counter()
    if together:
        await asyncio.gather(*(generate(stub, seed, previews) for seed in seeds))
    else:
        for seed in seeds:
            await generate(stub, seed, previews)
    return time.perf_counter() - start


def client_process(address: str, conn) -> None:
    """A separate client: runs each (seeds, previews, together) command and answers its seconds."""

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        async with grpc.aio.insecure_channel(address) as channel:
            stub = diffusion_pb2_grpc.DiffusionServiceStub(channel)
            while (command := await loop.run_in_executor(None, conn.recv)) is not None:
                conn.send(await timed(stub, *command))

    asyncio.run(serve())


class Client:
    """Sends timed commands to the client process, or runs them inline on this loop."""

    def __init__(self, address: str, mode: str) -> None:
        self.mode = mode
        if mode == "process":
            self.conn, child = multiprocessing.Pipe()
            self.process = multiprocessing.get_context("spawn").Process(
                target=client_process, args=(address, child), daemon=True
            )
            self.process.start()
        else:
            self.channel = grpc.aio.insecure_channel(address)
            self.stub = diffusion_pb2_grpc.DiffusionServiceStub(self.channel)

    async def run(self, seeds: list[int], previews: bool = False, together: bool = False) -> float:
        if self.mode == "process":

            def ask() -> float:
                self.conn.send((seeds, previews, together))
                return self.conn.recv()

            return await asyncio.get_running_loop().run_in_executor(None, ask)
        return await timed(self.stub, seeds, previews, together)

    async def close(self) -> None:
        if self.mode == "process":
            self.conn.send(None)
            self.process.join(10)
        else:
            await self.channel.close()


def median_ratio_interval(ratios: list[float], resamples: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of the median ratio: how far this run's median could be off by chance."""
    pick = random.Random(0).choices
    medians = sorted(statistics.median(pick(ratios, k=len(ratios))) for _ in range(resamples))
    return medians[int(resamples * 0.025)], medians[int(resamples * 0.975) - 1]


def ratio_line(name: str, times: list[float], base: list[float], target: float | None) -> str:
    """Median of the per-round ratios, with their interquartile range (the machine's noise) and the
    median's 95% interval; the verdict says whether the interval lies on one side of the target."""
    ratios = [t / b for t, b in zip(times, base, strict=True)]
    paired = statistics.median(ratios)
    low, _, high = statistics.quantiles(ratios, n=4)
    added = statistics.median(t - b for t, b in zip(times, base, strict=True))  # machine-independent
    line = (
        f"{name:<34} median {statistics.median(times) * 1000:7.1f} ms   added {added * 1000:+5.1f} ms   "
        f"ratio {paired:.3f}x [IQR {low:.2f}-{high:.2f}]"
    )
    if target is None:
        return line
    lower, upper = median_ratio_interval(ratios)
    verdict = "met" if paired <= target else "NOT met"
    if lower <= target < upper:
        verdict += ", within this run's noise"
    return f"{line} 95% CI {lower:.3f}-{upper:.3f}  (target <= {target:.2f}x: {verdict})"


async def main(args: argparse.Namespace) -> None:
    import torch

    from services.diffusion.main import build
    from services.diffusion.settings import DiffusionSettings

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from lumiserve.testing.tiny_models import build_tiny_sd

            model = Path(tmp) / "tiny-sd"
            build_tiny_sd(model)
        settings = DiffusionSettings(
            host="127.0.0.1",
            port=0,
            metrics_port=-1,
            models=[f"bench={model}"],
            device="cpu",
            num_threads=args.threads,
            min_size=8,
            batch_max_size=8,
            log_level="WARNING",
            engine=args.engine,
        )
        host, plane = build(settings)
        await host.start()
        await plane.start()
        await host.set_serving(True)

        # The baseline calls the very pipeline the service loaded, on the service's own device thread
        # (between jobs), so both run on the same OS thread with the same torch settings and the
        # event loop stays as idle as while the service computes.
        def baseline(seed: int) -> Awaitable[float]:
            return plane.run_on_device(run_baseline, seed)

        client = Client(host.address, args.client)
        runs = {
            "base": baseline,
            "again": baseline,
            "plain": lambda seed: client.run([seed]),
            "preview": lambda seed: client.run([seed], previews=True),
        }
        try:
            for seed in range(3):  # warm-up: allocator, first-call paths, gRPC connection
                for run in runs.values():
                    await run(seed)
            times: dict[str, list[float]] = {name: [] for name in runs}
            order = list(runs)
            for round_ in range(args.repeats):
                shift = round_ % len(order)
                for name in order[shift:] + order[:shift]:  # rotate: no fixed position
                    times[name].append(await runs[name](1000 + round_))
            print(
                f"tiny SD, {SIZE}x{SIZE}, {STEPS} steps, torch threads {args.threads}, "
                f"{args.repeats} rounds, client {args.client}, engine {args.engine}"
            )
            print(ratio_line("diffusers in-process (baseline)", times["base"], times["base"], None))
            print(ratio_line("same call again (A/A: the noise)", times["again"], times["base"], None))
            print(ratio_line("service via gRPC, previews off", times["plain"], times["base"], 1.05))
            print(ratio_line("service via gRPC, preview/step", times["preview"], times["base"], 1.15))

            one_by_one, together = [], []
            for round_ in range(args.batch_repeats):
                seeds = list(range(2000 + 8 * round_, 2008 + 8 * round_))
                one_by_one.append(await client.run(seeds))
                together.append(await client.run(seeds, together=True))
            speedup = statistics.median(s / c for s, c in zip(one_by_one, together, strict=True))
            print(
                f"batching: 8 requests one by one {statistics.median(one_by_one) * 1000:7.1f} ms, "
                f"8 at once {statistics.median(together) * 1000:7.1f} ms -> throughput {speedup:.2f}x "
                f"(target >= 1.5x: {'met' if speedup >= 1.5 else 'NOT met'})"
            )
        finally:
            await client.close()
            await host.drain(grace=0)
            await plane.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--repeats", type=int, default=100, help="interleaved rounds for the overhead ratios")
    parser.add_argument("--batch-repeats", type=int, default=3, help="rounds of the batching comparison")
    parser.add_argument(
        "--client", choices=("process", "inline"), default="process", help="where the client runs"
    )
    parser.add_argument(
        "--engine", choices=("process", "thread"), default="process", help="where the data plane runs"
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="diffusers folder (default: build the tiny one)"
    )
    asyncio.run(main(parser.parse_args()))
