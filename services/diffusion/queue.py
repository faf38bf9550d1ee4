"""The job queue: bounded per model, priorities, FIFO within a priority, visible positions.

Admission happens at push: a full queue answers RESOURCE_EXHAUSTED before any work. The worker pops
with the model it has loaded as `preferred`, so jobs for that model go first (no load thrash) unless
another model waits with a higher priority or the streak limit says it is that model's turn.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable

from services.common.errors import ResourceExhausted
from services.diffusion.jobs import Job


def _order(job: Job) -> tuple[int, int]:
    return (-job.priority, job.seq)


class JobQueue:
    def __init__(
        self,
        max_per_model: int,
        streak_limit: int = 8,
        on_depth: Callable[[str, int], None] | None = None,
    ) -> None:
        self.max_per_model = max_per_model
        self.streak_limit = streak_limit
        self._on_depth = on_depth or (lambda model, depth: None)
        self._queues: dict[str, list[Job]] = {}
        self._cond = threading.Condition()
        self._seq = 0
        self._last_model: str | None = None
        self._streak = 0
        self._closed = False
        self._woken = False

    def push(self, job: Job) -> None:
        with self._cond:
            jobs = self._queues.setdefault(job.model, [])
            if len(jobs) >= self.max_per_model:
                raise ResourceExhausted(
                    f"queue for model {job.model!r} is full ({self.max_per_model} jobs waiting)",
                    retry_after=1.0,
                )
            self._seq += 1
            job.seq = self._seq
            bisect.insort(jobs, job, key=_order)
            self._changed(job.model)
            self._cond.notify_all()

    def remove(self, job: Job) -> bool:
        """Takes a waiting job out (cancel); False if it was not waiting."""
        with self._cond:
            jobs = self._queues.get(job.model, [])
            if job not in jobs:
                return False
            jobs.remove(job)
            self._changed(job.model)
            return True

    def depth(self, model: str) -> int:
        with self._cond:
            return len(self._queues.get(model, []))

    def depths(self) -> dict[str, int]:
        with self._cond:
            return {model: len(jobs) for model, jobs in self._queues.items()}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wake(self) -> None:
        """Makes a waiting pop() return None now (the worker has other work: a device call)."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def _ready(self) -> bool:
        return self._closed or self._woken or any(self._queues.values())

    def pop(self, preferred: str | None, timeout: float | None = None) -> Job | None:
        """Blocks for the next job to run; None on timeout, close or wake()."""
        with self._cond:
            if not self._cond.wait_for(self._ready, timeout):
                return None
            if self._closed or self._woken:
                self._woken = False
                return None
            model = self._choose(preferred)
            job = self._queues[model].pop(0)
            self._streak = self._streak + 1 if model == self._last_model else 1
            self._last_model = model
            self._changed(model)
            return job

    def _choose(self, preferred: str | None) -> str:
        heads = {model: jobs[0] for model, jobs in self._queues.items() if jobs}
        top = max(job.priority for job in heads.values())
        contenders = {model: job for model, job in heads.items() if job.priority == top}
        if preferred in contenders:
            streak_over = preferred == self._last_model and self._streak >= self.streak_limit
            others = {model: job for model, job in contenders.items() if model != preferred}
            if not (streak_over and others):
                return preferred
            contenders = others  # its turn is over: the oldest head elsewhere goes first
        return min(contenders, key=lambda model: contenders[model].seq)

    def take_compatible(self, key: tuple, room: int, wait_until: float | None = None) -> list[Job]:
        """Waiting jobs whose batch key equals `key`, up to `room` images in total, in queue order.
        Waits up to `wait_until` (monotonic) for more to arrive while there is room."""
        taken: list[Job] = []
        model = key[0]
        with self._cond:
            while True:
                jobs = self._queues.get(model, [])
                for job in list(jobs):
                    if room <= 0:
                        break
                    if job.request.batch_key() == key and job.request.num_images <= room:
                        jobs.remove(job)
                        taken.append(job)
                        room -= job.request.num_images
                if taken:
                    self._changed(model)
                remaining = None if wait_until is None else wait_until - time.monotonic()
                if room <= 0 or remaining is None or remaining <= 0 or self._closed:
                    return taken
                self._cond.wait(remaining)

    def _changed(self, model: str) -> None:
        """Tells every waiting job of `model` its position; updates the depth gauge."""
        jobs = self._queues.get(model, [])
        for position, job in enumerate(jobs):
            job.set_position(position, len(jobs))
        self._on_depth(model, len(jobs))
