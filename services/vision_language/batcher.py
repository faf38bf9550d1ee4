"""Per-device scheduling: a queue per model with priorities, dynamic batching, one compute thread.

Requests to the same model that can share a batch are dispatched together, up to `max_batch_size`,
once the oldest has waited `max_wait`, at once if the batch is full, and also at once when no other
request for the model is on its way (being prepared): a lone request never waits for nobody. Model
loads and other device work run on the same thread, between batches, so compute never overlaps.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from services.common.errors import Cancelled, DeadlineExceeded, ResourceExhausted, Unavailable
from services.vision_language.jobs import Failed, GenerationJob

log = logging.getLogger(__name__)

Task = tuple[Callable[[], Any], concurrent.futures.Future]


class BatchQueue:
    def __init__(
        self,
        max_batch_size: int,
        max_wait_seconds: float,
        max_queue: int,
        on_depth: Callable[[str, int], None] = lambda model, depth: None,
        expecting: Callable[[str], bool] = lambda model: True,
    ) -> None:
        self.max_batch_size = max_batch_size
        self._expecting = expecting
        self.max_wait = max_wait_seconds
        self.max_queue = max_queue
        self._on_depth = on_depth
        self._cond = threading.Condition()
        self._pending: dict[str, list[GenerationJob]] = {}
        self._tasks: deque[Task] = deque()
        self._seq = 0
        self._closed = False

    @staticmethod
    def _order(job: GenerationJob) -> tuple[int, int]:
        return (-job.priority, job.seq)

    def submit(self, job: GenerationJob) -> None:
        """Queues a job, or raises ResourceExhausted at once when the model's queue is full."""
        with self._cond:
            if self._closed:
                raise Unavailable("the service is shutting down")
            queue = self._pending.setdefault(job.model, [])
            if len(queue) >= self.max_queue:
                raise ResourceExhausted(
                    f"the queue of model {job.model!r} is full ({self.max_queue} requests waiting)",
                    retry_after=1.0,
                )
            self._seq += 1
            job.seq = self._seq
            job.submitted_at = time.monotonic()
            bisect.insort(queue, job, key=self._order)
            self._on_depth(job.model, len(queue))
            self._cond.notify_all()

    def discard(self, job: GenerationJob) -> bool:
        """Removes a job that has not started yet (its client went away)."""
        with self._cond:
            queue = self._pending.get(job.model, [])
            if job in queue:
                queue.remove(job)
                self._on_depth(job.model, len(queue))
                return True
            return False

    def depth(self, model: str) -> int:
        with self._cond:
            return len(self._pending.get(model, ()))

    def depths(self) -> dict[str, int]:
        with self._cond:
            return {model: len(queue) for model, queue in self._pending.items()}

    def run_task(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Runs `fn` on the device thread before the next batch."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise Unavailable("the service is shutting down")
            self._tasks.append((fn, future))
            self._cond.notify_all()
        return future

    def _drop_cancelled(self) -> None:
        for model, queue in self._pending.items():
            gone = [job for job in queue if job.cancelled]
            for job in gone:
                queue.remove(job)
                error = DeadlineExceeded("deadline passed while queued") if job.past_deadline else None
                job.channel.put(Failed(error or Cancelled("cancelled while queued")))
            if gone:
                self._on_depth(model, len(queue))

    def next_item(self) -> Task | list[GenerationJob] | None:
        """Blocks until a task or a batch is due; None once closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                if self._tasks:
                    return self._tasks.popleft()
                self._drop_cancelled()
                heads = [queue[0] for queue in self._pending.values() if queue]
                if not heads:
                    self._cond.wait()
                    continue
                head = min(heads, key=self._order)
                queue = self._pending[head.model]
                key = head.batch_key()
                batch = [job for job in queue if job.batch_key() == key][: self.max_batch_size]
                waited = time.monotonic() - head.submitted_at
                due = head.alone or len(batch) >= self.max_batch_size or waited >= self.max_wait
                if due or not self._expecting(head.model):  # no other request on its way: go now
                    for job in batch:
                        queue.remove(job)
                    self._on_depth(head.model, len(queue))
                    return batch
                self._cond.wait(self.max_wait - waited)

    def close(self) -> None:
        """Stops the worker; queued jobs fail with UNAVAILABLE and tasks are cancelled."""
        with self._cond:
            self._closed = True
            for model, queue in self._pending.items():
                for job in queue:
                    job.channel.put(Failed(Unavailable("the service is shutting down")))
                queue.clear()
                self._on_depth(model, 0)
            while self._tasks:
                self._tasks.popleft()[1].cancel()
            self._cond.notify_all()


class DeviceWorker:
    """The one thread that runs model compute on a device: batches and tasks from its queue."""

    def __init__(
        self, device: str, queue: BatchQueue, run_batch: Callable[[list[GenerationJob]], None]
    ) -> None:
        self.device = device
        self.queue = queue
        self._run_batch = run_batch
        self.running_model: str | None = None
        self.running_jobs = 0
        self._thread = threading.Thread(target=self._loop, name=f"vlm-worker-{device}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (item := self.queue.next_item()) is not None:
            if isinstance(item, tuple):
                fn, future = item
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as error:
                        future.set_exception(error)
                continue
            self.running_model, self.running_jobs = item[0].model, len(item)
            try:
                self._run_batch(item)
            except BaseException as error:  # never let one batch kill the device thread
                log.exception("batch of %s failed", self.running_model)
                for job in item:
                    job.channel.put(Failed(error))
            finally:
                self.running_model, self.running_jobs = None, 0

    def stop(self, timeout: float = 10.0) -> None:
        self.queue.close()
        self._thread.join(timeout)
