"""Registry processes under stress: kill -9 in the middle of a burst of writes loses no acknowledged
write (SQLite WAL file), and two processes writing to one PostgreSQL database lose nothing."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from lumiserve.common.v1 import common_pb2
from lumiserve.model_registry.v1 import model_registry_pb2 as pb
from lumiserve.model_registry.v1 import model_registry_pb2_grpc as pb_grpc
from services.model_registry import testing
from services.model_registry.db import Database
from services.model_registry.store import Store
from services.model_registry.testing import RegistryProcess

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0


def model(model_id: str) -> pb.Model:
    return pb.Model(
        id=model_id,
        family=common_pb2.MODEL_FAMILY_DIFFUSION,
        source=f"repo/{model_id}",
        tasks=["txt2img"],
        variants=[pb.Variant(name="fp16", precision=common_pb2.PRECISION_FP16)],
    )


async def burst(address: str, prefix: str, count: int, acked: list[str], concurrency: int = 6) -> None:
    """Creates `count` models; appends each id once the registry acknowledged it. Failures (the
    registry being killed) end a worker quietly."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ModelRegistryServiceStub(channel)
        ids = iter(f"{prefix}-{n:04d}" for n in range(count))

        async def worker() -> None:
            for model_id in ids:
                try:
                    await stub.CreateModel(
                        pb.CreateModelRequest(model=model(model_id)), metadata=testing.ADMIN, timeout=10
                    )
                except grpc.aio.AioRpcError:
                    return
                acked.append(model_id)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def kill_after(process: RegistryProcess, acked: list[str], count: int) -> None:
    while len(acked) < count:
        await asyncio.sleep(0.005)
    process.kill()


async def all_model_ids(address: str) -> set[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ModelRegistryServiceStub(channel)
        ids, token = set(), ""
        while True:
            page = await stub.ListModels(
                pb.ListModelsRequest(pagination=common_pb2.Pagination(page_size=1000, page_token=token))
            )
            ids |= {m.id for m in page.models}
            token = page.page_info.next_page_token
            if not token:
                return ids


def logged_creations(database_url: str) -> list[tuple[int, str]]:
    database = Database(database_url)
    try:
        return [
            (c.revision, c.record.id)
            for c in Store(database).changes_since(0, 100_000)
            if c.change_type == "created"
        ]
    finally:
        database.dispose()


async def test_kill_9_during_a_burst_loses_no_acknowledged_write(tmp_path):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    first = RegistryProcess(url, tmp_path, "first")
    try:
        address = await first.ready()
        acked: list[str] = []
        await asyncio.gather(burst(address, "m", 400, acked), kill_after(first, acked, 40))
    finally:
        if first.process.poll() is None:
            first.kill()
    assert first.process.returncode == -signal.SIGKILL
    assert 40 <= len(acked) < 400  # killed mid-burst

    second = RegistryProcess(url, tmp_path, "second")
    try:
        stored = await all_model_ids(await second.ready())
    finally:
        assert second.stop() == 0
    missing = set(acked) - stored
    assert not missing, f"acknowledged but lost: {sorted(missing)}"
    # Data and change log were committed together: each stored model was logged exactly once.
    logged = [model_id for _, model_id in logged_creations(url)]
    assert sorted(logged) == sorted(stored)


async def test_two_processes_on_one_postgres_lose_nothing_even_when_one_is_killed(tmp_path):
    if reason := testing.postgres_unavailable_reason():
        pytest.skip(reason)
    with testing.postgres_schema() as url:
        a = RegistryProcess(url, tmp_path, "a")
        b = RegistryProcess(url, tmp_path, "b")  # both migrate at once
        try:
            address_a, address_b = await asyncio.gather(a.ready(), b.ready())
            async with grpc.aio.insecure_channel(address_b) as channel:
                watch = pb_grpc.ModelRegistryServiceStub(channel).Watch(pb.WatchRequest())
                assert (await asyncio.wait_for(watch.read(), 10)).change_type == pb.CHANGE_TYPE_SYNCED
                acked_a: list[str] = []
                acked_b: list[str] = []
                await asyncio.gather(
                    burst(address_a, "a", 300, acked_a),
                    burst(address_b, "b", 120, acked_b),
                    kill_after(a, acked_a, 60),
                )
                assert len(acked_b) == 120 and 60 <= len(acked_a) < 300
                stored = await all_model_ids(address_b)
                assert not (set(acked_a) | set(acked_b)) - stored
                # B's watch saw every creation, A's included, in revision order.
                seen: list[pb.WatchResponse] = []
                while len(seen) < len(stored):
                    seen.append(await asyncio.wait_for(watch.read(), 10))
                watch.cancel()
            assert sorted(c.model.id for c in seen) == sorted(stored)
            assert [c.revision for c in seen] == sorted({c.revision for c in seen})
            assert [model_id for _, model_id in logged_creations(url)] == [c.model.id for c in seen]
        finally:
            for process in (a, b):
                if process.process.poll() is None:
                    process.kill()


def test_migrate_command(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    command = [sys.executable, "-m", "services.model_registry.main", "migrate", "--database-url", url]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "schema version 1 (applied 1)" in first.stdout
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "already up to date" in again.stdout
