"""The diffusion job queue: admission, priorities, FIFO, positions, model grouping, batching picks."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from services.common.errors import ResourceExhausted
from services.diffusion.jobs import Job, QueuedEvent
from services.diffusion.queue import JobQueue
from services.diffusion.requests import GenerationRequest, Limits, validate


def job(loop, name: str, model: str = "a", priority: int = 2, steps: int = 4, num_images: int = 1) -> Job:
    request = validate(
        GenerationRequest(
            model=model, job_id=name, priority=priority, steps=steps, num_images=num_images, width=64
        ),
        Limits(),
    )
    return Job(request, "t", loop)


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def queued_positions(loop, j: Job) -> list[int]:
    loop.run_until_complete(asyncio.sleep(0))  # deliver call_soon_threadsafe events
    positions = []
    while not j._events.empty():
        event = j._events.get_nowait()
        if isinstance(event, QueuedEvent):
            positions.append(event.position)
    return positions


def test_full_queue_refuses_at_once(loop):
    queue = JobQueue(max_per_model=2)
    queue.push(job(loop, "1"))
    queue.push(job(loop, "2"))
    with pytest.raises(ResourceExhausted, match="full"):
        queue.push(job(loop, "3"))
    queue.push(job(loop, "other", model="b"))  # the limit is per model
    assert queue.depths() == {"a": 2, "b": 1}


def test_priority_then_fifo(loop):
    queue = JobQueue(max_per_model=10)
    jobs = [job(loop, "n1"), job(loop, "low", priority=1), job(loop, "n2"), job(loop, "high", priority=3)]
    for j in jobs:
        queue.push(j)
    order = [queue.pop("a", timeout=0).id for _ in jobs]
    assert order == ["high", "n1", "n2", "low"]
    assert queue.pop("a", timeout=0) is None


def test_positions_are_told_as_they_move(loop):
    queue = JobQueue(max_per_model=10)
    first, second = job(loop, "first"), job(loop, "second", priority=3)
    queue.push(first)
    queue.push(second)
    assert queued_positions(loop, first) == [0, 1]
    assert queued_positions(loop, second) == [0]
    queue.pop("a", timeout=0)
    assert queued_positions(loop, first) == [0]
    assert queue.remove(first) and not queue.remove(first)
    assert queue.depth("a") == 0


def test_loaded_model_first_until_its_streak_ends(loop):
    queue = JobQueue(max_per_model=10, streak_limit=2)
    queue.push(job(loop, "b1", model="b"))
    for i in range(3):
        queue.push(job(loop, f"a{i}", model="a"))
    order = []
    current = "a"
    while (popped := queue.pop(current, timeout=0)) is not None:
        order.append(popped.id)
        current = popped.model
    # a1 and a2 run before the older b1 (no model switch), until the streak limit of 2
    assert order == ["a0", "a1", "b1", "a2"]


def test_higher_priority_elsewhere_beats_the_loaded_model(loop):
    queue = JobQueue(max_per_model=10)
    queue.push(job(loop, "a0", model="a"))
    queue.push(job(loop, "b-high", model="b", priority=3))
    assert queue.pop("a", timeout=0).id == "b-high"


def test_take_compatible_takes_matching_jobs_within_room(loop):
    queue = JobQueue(max_per_model=10)
    head = job(loop, "head")
    same = [job(loop, "same1", num_images=2), job(loop, "same2"), job(loop, "same3", num_images=3)]
    different = job(loop, "other-steps", steps=9)
    for j in [*same, different]:
        queue.push(j)
    taken = queue.take_compatible(head.request.batch_key(), room=3)
    assert [j.id for j in taken] == ["same1", "same2"]
    assert queue.depth("a") == 2


def test_take_compatible_waits_for_late_arrivals(loop):
    queue = JobQueue(max_per_model=10)
    head = job(loop, "head")
    late = job(loop, "late")
    threading.Timer(0.05, queue.push, args=(late,)).start()
    taken = queue.take_compatible(head.request.batch_key(), room=1, wait_until=time.monotonic() + 5)
    assert taken == [late]


def test_pop_blocks_until_a_job_or_close(loop):
    queue = JobQueue(max_per_model=10)
    threading.Timer(0.05, queue.close).start()
    assert queue.pop(None, timeout=5) is None
