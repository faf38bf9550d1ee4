"""Stateful parts without models: the session store, the batch queue and the model cache's budget."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from services.common.errors import InvalidArgument, NotFound, ResourceExhausted
from services.vision_language.batcher import BatchQueue, DeviceWorker
from services.vision_language.catalog import ModelSpec
from services.vision_language.jobs import EventChannel, Failed, GenerationJob
from services.vision_language.model_cache import LoadedModel, ModelCache
from services.vision_language.requests import SamplingParams
from services.vision_language.sessions import SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store(clock, **overrides) -> SessionStore:
    values = {"max_sessions": 3, "default_ttl": 60, "max_ttl": 600, "kv_budget_bytes": 100, "clock": clock}
    return SessionStore(**{**values, **overrides})


def test_sessions_expire_after_idle_ttl():
    clock = Clock()
    sessions = store(clock)
    session = sessions.create("t", "m", [], ttl_seconds=10)
    clock.now += 9
    sessions.get(session.session_id, "t")  # using it restarts the idle time
    clock.now += 9
    assert sessions.get(session.session_id, "t") is session
    clock.now += 11
    with pytest.raises(NotFound, match="expired"):
        sessions.get(session.session_id, "t")
    default = sessions.create("t", "m", [])
    assert default.ttl_seconds == 60
    clock.now += 61
    assert sessions.sweep() == 1 and len(sessions) == 0
    with pytest.raises(InvalidArgument):
        sessions.create("t", "m", [], ttl_seconds=601)


def test_sessions_evict_least_recently_used_and_count():
    counts = []
    sessions = store(Clock(), on_count=counts.append)
    a, b, c = (sessions.create("t", "m", []) for _ in range(3))
    sessions.get(a.session_id, "t")
    d = sessions.create("t", "m", [])
    with pytest.raises(NotFound):
        sessions.get(b.session_id, "t")
    assert {s.session_id for s in sessions.list("t")} == {a.session_id, c.session_id, d.session_id}
    assert counts[-1] == 3


def test_sessions_are_invisible_to_other_tenants():
    sessions = store(Clock())
    session = sessions.create("alice", "m", [])
    with pytest.raises(NotFound):
        sessions.get(session.session_id, "bob")
    with pytest.raises(NotFound):
        sessions.delete(session.session_id, "bob")
    assert sessions.list("bob") == []
    sessions.delete(session.session_id, "alice")
    assert sessions.list("alice") == []


class FakeCache:
    def __init__(self, nbytes: int) -> None:
        self.layers = [
            type("Layer", (), {"keys": torch.zeros(nbytes // 8), "values": torch.zeros(nbytes // 8)})()
        ]


def test_session_kv_caches_stay_under_their_budget():
    sessions = store(Clock(), kv_budget_bytes=300)  # float32: FakeCache(n) holds n bytes
    a, b = sessions.create("t", "m", []), sessions.create("t", "m", [])
    sessions.store_kv(a, FakeCache(160), (1, 2))
    sessions.store_kv(b, FakeCache(160), (1, 2))
    assert a.kv is None and b.kv is not None  # a was the least recently used
    assert sessions.kv_bytes() == 160
    assert sessions.take_kv(b) is not None and b.kv is None


# ---------------------------------------------------------------- batch queue


class NullChannel:
    def __init__(self) -> None:
        self.events = []

    def put(self, event) -> None:
        self.events.append(event)


def make_job(model="m", priority=0, length=4, pixels=True, **fields) -> GenerationJob:
    inputs = {"input_ids": torch.ones(1, length, dtype=torch.long), "attention_mask": torch.ones(1, length)}
    if pixels:
        inputs["pixel_values"] = torch.zeros(1, 3, 8, 8)
    return GenerationJob(model, inputs, SamplingParams(), 4, NullChannel(), priority=priority, **fields)  # type: ignore[arg-type]


def test_queue_batches_compatible_jobs_by_priority_then_arrival():
    queue = BatchQueue(max_batch_size=2, max_wait_seconds=0, max_queue=10)
    low, text_only, high1, high2 = (
        make_job(),
        make_job(pixels=False),
        make_job(priority=1),
        make_job(priority=1),
    )
    for job in (low, text_only, high1, high2):
        queue.submit(job)
    assert queue.next_item() == [high1, high2]
    assert queue.next_item() == [low]  # text-only encodings are not batched with image ones
    assert queue.next_item() == [text_only]


def test_queue_waits_for_more_jobs_up_to_max_wait():
    queue = BatchQueue(max_batch_size=3, max_wait_seconds=0.2, max_queue=10)
    first = make_job()
    queue.submit(first)
    threading.Timer(0.05, lambda: queue.submit(make_job())).start()
    assert len(queue.next_item()) == 2
    session = make_job(keep_cache=True)
    queue.submit(session)
    start = time.monotonic()
    assert queue.next_item() == [session]  # a job that must run alone does not wait
    assert time.monotonic() - start < 0.2


def test_queue_is_bounded_per_model_and_drops_cancelled_jobs():
    depths = {}
    queue = BatchQueue(1, 0, max_queue=2, on_depth=depths.__setitem__)
    a, b = make_job(), make_job()
    queue.submit(a)
    queue.submit(b)
    with pytest.raises(ResourceExhausted, match="full"):
        queue.submit(make_job())
    queue.submit(make_job(model="other"))
    assert depths == {"m": 2, "other": 1}
    a.cancel()
    assert queue.next_item() == [b]
    assert isinstance(a.channel.events[0], Failed)
    assert queue.discard(b) is False
    late = make_job(deadline=time.monotonic() - 1)
    queue.submit(late)
    assert queue.next_item()[0].model == "other"
    assert type(late.channel.events[0].error).__name__ == "DeadlineExceeded"


def test_worker_runs_tasks_and_batches_and_survives_failures():
    ran = []

    def run(batch):
        ran.append(batch)
        if batch[0].model == "boom":
            raise RuntimeError("kaput")

    queue = BatchQueue(4, 0, 10)
    worker = DeviceWorker("cpu", queue, run)
    assert queue.run_task(lambda: 41 + 1).result(5) == 42
    boom = make_job(model="boom")
    queue.submit(boom)
    ok = make_job()
    queue.submit(ok)
    deadline = time.monotonic() + 5
    while len(ran) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert isinstance(boom.channel.events[0], Failed)
    assert ran[-1] == [ok]
    worker.stop()
    with pytest.raises(Exception, match="shutting down"):
        queue.submit(make_job())


async def test_event_channel_delivers_bursts_from_another_thread():
    channel = EventChannel(asyncio.get_running_loop())
    thread = threading.Thread(target=lambda: [channel.put(i) for i in range(100)])  # type: ignore[func-returns-value]
    thread.start()
    received = []
    while len(received) < 100:
        received += await channel.get_all()
    thread.join()
    assert received == list(range(100))


# ---------------------------------------------------------------- model cache budget


def fake_loader(sizes: dict[str, int]):
    def load(spec: ModelSpec, device: str, max_images: int) -> LoadedModel:
        return LoadedModel(
            spec,
            None,
            None,
            "llava",
            "cpu",
            torch.float32,
            4096,
            max_images,
            sizes[spec.model],
            0.0,
            32,
            frozenset({2}),
            0,
        )

    return load


def test_model_cache_evicts_least_recently_used_unpinned_idle_models():
    sizes = {"a": 40, "b": 40, "pinned": 30, "c": 50, "huge": 500}
    busy = set()
    specs = [
        ModelSpec("a", "x"),
        ModelSpec("b", "x"),
        ModelSpec("pinned", "x", pinned=True),
        ModelSpec("c", "x"),
    ]
    cache = ModelCache(specs, 120, "cpu", 4, is_busy=busy.__contains__, loader=fake_loader(sizes))
    for name in ("pinned", "a", "b"):
        cache.load(cache.spec(name))
    time.sleep(0.01)
    cache.get("a")  # b is now the least recently used
    _, evicted = cache.load(cache.spec("c"))
    assert evicted == ["b"]
    busy.add("a")
    with pytest.raises(ResourceExhausted, match="budget"):
        cache.load(ModelSpec("huge", "x"))
    assert {m.name for m in cache.loaded()} == {"pinned", "a", "c"}
    with pytest.raises(NotFound):
        cache.spec("nope")
    with pytest.raises(NotFound):
        cache.unload("b")


def test_closing_the_queue_cancels_pending_tasks_and_fails_queued_jobs():
    queue = BatchQueue(1, 0, 1)
    future = queue.run_task(lambda: None)
    job = make_job()
    queue.submit(job)
    queue.close()
    assert future.cancelled()
    assert type(job.channel.events[0].error).__name__ == "Unavailable"
    assert queue.next_item() is None


async def test_event_channel_holds_deltas_until_the_interval_but_not_the_end():
    from services.vision_language.jobs import Delta, Finished

    loop = asyncio.get_running_loop()
    channel = EventChannel(loop)
    channel.put(Delta("a", (1,)))
    start = time.monotonic()
    assert await channel.get_all(not_before=start + 0.2) == [Delta("a", (1,))]
    assert time.monotonic() - start >= 0.19  # held back until the interval
    loop.call_later(0.02, lambda: threading.Thread(target=channel.put, args=(Finished(None),)).start())
    start = time.monotonic()
    events = await channel.get_all(not_before=start + 5)
    assert isinstance(events[0], Finished) and time.monotonic() - start < 2  # the end is not held
