"""One batch of generation with Hugging Face `generate`: per-request sampling, streaming, stopping.

Rows are left-padded into one batch. Each step, `RowSampler` (a LogitsProcessor) applies every row's own
temperature / top-k / top-p / repetition penalty and draws its token with the row's own seeded
generator, so a seeded request gives the same tokens whatever it is batched with; greedy rows are left to
`generate`'s argmax. `StepMonitor` (a StoppingCriteria, called once per generated token) streams each
row's new text, and stops a row on end-of-sequence, its max_new_tokens, a stop sequence, or its
cancellation flag / deadline, so cancelled work stops within one token.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria

from services.common.errors import ResourceExhausted
from services.vision_language.jobs import (
    Delta,
    Failed,
    Finished,
    GenerationJob,
    GenerationResult,
    Started,
)
from services.vision_language.model_cache import LoadedModel
from services.vision_language.requests import FinishReason
from services.vision_language.textstream import IncrementalDecoder, StopMatcher


class _Row:
    """Generation state of one request in the batch."""

    def __init__(self, job: GenerationJob, tokenizer: Any, eos: frozenset[int], started: float) -> None:
        self.job = job
        self.sampling = job.sampling
        self.eos = eos
        self.started = started
        self.decoder = IncrementalDecoder(tokenizer)
        self.stops = StopMatcher(job.sampling.stop)
        self.generated: list[int] = []
        self._unsent: list[int] = []
        self._parts: list[str] = []
        self.finish: FinishReason | None = None
        self.finished_at = 0.0
        self.first_token_at: float | None = None
        self._generator: torch.Generator | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None:
            seed = self.sampling.seed if self.sampling.seed is not None else secrets.randbits(63)
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
        return self._generator

    def _send(self, text: str) -> None:
        if text or self._unsent:
            self._parts.append(text)
            self.job.channel.put(Delta(text, tuple(self._unsent)))
            self._unsent = []

    def take(self, token: int, now: float) -> None:
        """A new token for this row: stream its text, decide whether the row is finished."""
        if token in self.eos:
            self.close(FinishReason.STOP, now)
            return
        if self.first_token_at is None:
            self.first_token_at = now
        self.generated.append(token)
        self._unsent.append(token)
        text, stopped = self.stops.feed(self.decoder.push(token))
        if stopped:
            self._send(text)
            self.close(FinishReason.STOP_SEQUENCE, now)
        elif len(self.generated) >= self.job.max_new_tokens:
            self._send(text)
            self.close(FinishReason.LENGTH, now)
        elif text:
            self._send(text)

    def close(self, reason: FinishReason, now: float) -> None:
        """Marks the row finished; releases text held back unless cancelled or stopped by a sequence."""
        if self.finish is not None:
            return
        if reason in (FinishReason.STOP, FinishReason.LENGTH):
            tail, stopped = self.stops.feed(self.decoder.flush())
            if stopped:
                reason = FinishReason.STOP_SEQUENCE
            else:
                tail += self.stops.flush()
            self._send(tail)
        self.finish, self.finished_at = reason, now

    def result(self, cache: Any = None, cached_ids: tuple[int, ...] = ()) -> GenerationResult:
        job = self.job
        decode_seconds = max(self.finished_at - self.started, 1e-9)
        return GenerationResult(
            finish_reason=self.finish or FinishReason.LENGTH,
            text="".join(self._parts),
            token_ids=tuple(self.generated),
            prompt_tokens=job.prompt_tokens,
            cached_prompt_tokens=job.cached_tokens,
            time_to_first_token=(self.first_token_at or self.finished_at) - job.accepted_at,
            tokens_per_second=len(self.generated) / decode_seconds,
            total_seconds=self.finished_at - job.accepted_at,
            queue_seconds=self.started - job.submitted_at,
            cache=cache,
            cached_ids=cached_ids,
        )


class RowSampler(LogitsProcessor):
    """Per-row sampling inside one batched `generate` call (which itself decodes greedily): a sampled
    row's scores become -inf except for the token drawn with that row's generator."""

    def __init__(self, rows: list[_Row], prompt_width: int, pad_widths: list[int]) -> None:
        self.rows = rows
        self.prompt_width = prompt_width
        self.pad_widths = pad_widths
        self._eos = sorted(rows[0].eos) if rows else []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_width
        for i, row in enumerate(self.rows):
            params = row.sampling
            if row.finish is not None:
                continue
            if params.greedy and params.repetition_penalty == 1.0 and step >= params.min_new_tokens:
                continue
            logits = scores[i]
            if params.repetition_penalty != 1.0:
                seen = input_ids[i, self.pad_widths[i] :]
                previous = logits.gather(0, seen)
                penalised = torch.where(
                    previous < 0, previous * params.repetition_penalty, previous / params.repetition_penalty
                )
                logits.scatter_(0, seen, penalised)
            if step < params.min_new_tokens:
                for eos in self._eos:
                    logits[eos] = -float("inf")
            if params.greedy:
                continue
            logits = logits / params.temperature
            if 0 < params.top_k < logits.numel():
                kth = torch.topk(logits, params.top_k).values[-1]
                logits = logits.masked_fill(logits < kth, -float("inf"))
            if params.top_p < 1.0:
                ordered, order = torch.sort(logits, descending=True)
                probs = ordered.softmax(-1)
                beyond = (probs.cumsum(-1) - probs) > params.top_p  # keeps at least the top token
                logits = logits.index_fill(0, order[beyond], -float("inf"))
            token = torch.multinomial(logits.softmax(-1), 1, generator=row.generator(logits.device))
            scores[i] = -float("inf")
            scores[i, token] = 0.0
        return scores


class StepMonitor(StoppingCriteria):
    """Called by `generate` after every token: streams each row and says which rows are finished."""

    def __init__(self, rows: list[_Row], on_finished: Any) -> None:
        self.rows = rows
        self.on_finished = on_finished
        self._done: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        if self._done is None:
            self._done = torch.zeros(len(self.rows), dtype=torch.bool, device=input_ids.device)
        tokens = input_ids[:, -1].tolist()
        now = time.monotonic()
        for i, row in enumerate(self.rows):
            if row.finish is not None:
                continue
            if row.job.cancelled:  # the token of this step is dropped: stopped within one token
                row.close(FinishReason.CANCELLED, now)
            else:
                row.take(tokens[i], now)
            if row.finish is not None:
                self._done[i] = True
                self.on_finished(row)
        return self._done


def collate(
    encodings: list[dict[str, torch.Tensor]], pad_token_id: int
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Left-pads single-row encodings into one batch; returns it and each row's padding width."""
    if len(encodings) == 1:
        return encodings[0], [0]
    lengths = [e["input_ids"].shape[1] for e in encodings]
    width = max(lengths)
    pads = [width - n for n in lengths]
    batch: dict[str, torch.Tensor] = {}
    for key in encodings[0]:
        values = [e[key] for e in encodings]
        if key == "input_ids":
            batch[key] = torch.cat(
                [F.pad(v, (p, 0), value=pad_token_id) for v, p in zip(values, pads, strict=True)]
            )
        elif values[0].ndim == 2 and values[0].shape[1] == lengths[0]:  # attention mask, token types
            batch[key] = torch.cat([F.pad(v, (p, 0), value=0) for v, p in zip(values, pads, strict=True)])
        elif key == "pixel_values" and values[0].ndim == 5:  # LLaVA-NeXT: (images, tiles, C, H, W)
            tiles = max(v.shape[1] for v in values)
            batch[key] = torch.cat([F.pad(v, (0, 0, 0, 0, 0, 0, 0, tiles - v.shape[1])) for v in values])
        else:
            batch[key] = torch.cat(values)
    return batch, pads


def generate_batch(
    loaded: LoadedModel,
    jobs: list[GenerationJob],
    on_result: Callable[[GenerationJob, GenerationResult], None] = lambda job, result: None,
) -> None:
    """Runs `jobs` (same model, compatible encodings) as one `generate` call; every job gets Started,
    its deltas and then Finished (or Failed). `on_result` sees every result, also of jobs whose client
    has gone (metrics)."""
    started = time.monotonic()
    rows = [_Row(job, loaded.tokenizer, loaded.eos_token_ids, started) for job in jobs]
    for job in jobs:
        job.channel.put(Started(queue_seconds=started - job.submitted_at, batch_size=len(jobs)))
    keep_cache = len(jobs) == 1 and jobs[0].keep_cache

    def finish(row: _Row, result: GenerationResult) -> None:
        row.job.channel.put(Finished(result))
        on_result(row.job, result)

    def on_finished(row: _Row) -> None:
        if not keep_cache:  # a session's result waits for the cache, after generate returns
            finish(row, row.result())

    try:
        inputs, pads = collate([job.inputs for job in jobs], loaded.pad_token_id)
        inputs = {key: value.to(loaded.device) for key, value in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max(job.max_new_tokens for job in jobs),
            pad_token_id=loaded.pad_token_id,
            eos_token_id=sorted(loaded.eos_token_ids) or None,
        )
        processors = LogitsProcessorList()
        if any(
            not r.sampling.greedy or r.sampling.repetition_penalty != 1.0 or r.sampling.min_new_tokens
            for r in rows
        ):
            processors.append(RowSampler(rows, inputs["input_ids"].shape[1], pads))
        extra = {"cache": jobs[0].cache} if jobs[0].cache is not None else {}
        with torch.inference_mode():
            output = loaded.model.generate(
                **inputs,
                **extra,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=[StepMonitor(rows, on_finished)],
                return_dict_in_generate=keep_cache,
            )
    except Exception as error:
        if isinstance(error, torch.OutOfMemoryError):
            error = ResourceExhausted(f"out of device memory on {loaded.device} with a batch of {len(jobs)}")
        for row in rows:
            if row.finish is None or keep_cache:
                row.job.channel.put(Failed(error))
        return
    now = time.monotonic()
    for row in rows:
        if row.finish is None:  # generate stopped on its own (max length)
            row.close(FinishReason.CANCELLED if row.job.cancelled else FinishReason.LENGTH, now)
            on_finished(row)
    if keep_cache:
        cache = output.cache
        cached_ids = tuple(output.sequences[0, : cache.get_seq_length()].tolist())
        finish(rows[0], rows[0].result(cache, cached_ids))
