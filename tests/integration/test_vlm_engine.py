"""The generation engine below the gRPC layer, with the tiny LLaVA: cancellation within one token,
per-row limits in one batch, seeded rows independent of their batch-mates, KV reuse after cropping."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from services.vision_language.catalog import ModelSpec
from services.vision_language.encoding import fit_context, reuse_cache
from services.vision_language.generation import generate_batch
from services.vision_language.jobs import Delta, Finished, GenerationJob, Started
from services.vision_language.model_cache import load_model
from services.vision_language.requests import (
    ChatMessage,
    FinishReason,
    ImagePart,
    Role,
    SamplingParams,
    TextPart,
)


class Recorder:
    """Stands in for the event loop side: records events; `on_delta` may act on the worker thread."""

    def __init__(self, on_delta=None) -> None:
        self.events = []
        self.on_delta = on_delta

    def put(self, event) -> None:
        self.events.append(event)
        if isinstance(event, Delta) and self.on_delta:
            self.on_delta(self)

    @property
    def token_ids(self) -> list[int]:
        return [t for e in self.events if isinstance(e, Delta) for t in e.token_ids]

    @property
    def result(self):
        (finished,) = [e for e in self.events if isinstance(e, Finished)]
        return finished.result


@pytest.fixture(scope="module")
def llava(tiny_models):
    torch.set_num_threads(1)
    return load_model(ModelSpec("llava", str(tiny_models.llava)), "cpu", 4)


def conversation(text: str, colour=(200, 10, 10)) -> list[ChatMessage]:
    image = ImagePart(Image.new("RGB", (40, 30), colour))
    return [ChatMessage(Role.USER, (image, TextPart(text)))]


def job(llava, text: str, n: int, channel: Recorder, **sampling) -> GenerationJob:
    fitted = fit_context(llava, conversation(text), n)
    params = SamplingParams(max_new_tokens=n, min_new_tokens=sampling.pop("min_new_tokens", n), **sampling)
    return GenerationJob("llava", fitted.inputs, params, fitted.max_new_tokens, channel)  # type: ignore[arg-type]


def count_forwards(model) -> list[int]:
    calls = [0]
    model.model.language_model.register_forward_hook(lambda *args: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_cancellation_stops_within_one_token(llava):
    forwards = count_forwards(llava.model)
    cancelling = job(llava, "stop me", 500, Recorder())

    def cancel_at_three(recorder: Recorder) -> None:
        if len(recorder.token_ids) >= 3:
            cancelling.cancel()

    cancelling.channel.on_delta = cancel_at_three
    forwards[0] = 0
    generate_batch(llava, [cancelling])
    result = cancelling.channel.result
    assert result.finish_reason is FinishReason.CANCELLED
    assert result.completion_tokens == len(cancelling.channel.token_ids) == 3
    # prefill gives token 1, two decode steps tokens 2-3, one more step is where the flag is seen
    assert forwards[0] <= 4


def test_one_cancelled_row_does_not_stop_its_batch(llava):
    keep = job(llava, "keep going", 12, Recorder())
    stop = job(llava, "stop", 12, Recorder(on_delta=lambda r: stop.cancel()))
    generate_batch(llava, [keep, stop])
    assert stop.channel.result.finish_reason is FinishReason.CANCELLED
    assert stop.channel.result.completion_tokens == 1
    assert keep.channel.result.finish_reason is FinishReason.LENGTH
    assert keep.channel.result.completion_tokens == 12
    started = [e for e in keep.channel.events if isinstance(e, Started)]
    assert started[0].batch_size == 2


def test_rows_of_one_batch_keep_their_own_limits_and_seeds(llava):
    seeded = {"temperature": 0.9, "top_k": 40, "seed": 5}
    alone = job(llava, "sample", 9, Recorder(), **seeded)
    generate_batch(llava, [alone])
    short, long_ = job(llava, "a", 3, Recorder()), job(llava, "bb bb", 15, Recorder())
    together = job(llava, "sample", 9, Recorder(), **seeded)
    generate_batch(llava, [short, together, long_])
    assert together.channel.token_ids == alone.channel.token_ids
    assert short.channel.result.completion_tokens == 3
    assert long_.channel.result.completion_tokens == 15


def test_min_new_tokens_masks_end_of_sequence(llava):
    eos = next(iter(llava.eos_token_ids))
    forced = job(llava, "x", 6, Recorder(), repetition_penalty=1.0)
    # make end-of-sequence the most likely token: without the mask, the row would stop at once
    llava.model.lm_head.bias = torch.nn.Parameter(torch.zeros(llava.model.lm_head.out_features))
    try:
        with torch.no_grad():
            llava.model.lm_head.bias[eos] = 1e4
        generate_batch(llava, [forced])
        free = job(llava, "x", 6, Recorder(), min_new_tokens=0)
        generate_batch(llava, [free])
    finally:
        llava.model.lm_head.bias = None
    assert forced.channel.result.completion_tokens == 6
    assert eos not in forced.channel.token_ids
    assert free.channel.result.finish_reason is FinishReason.STOP
    assert free.channel.result.completion_tokens == 0


def test_kv_cache_reuse_after_crop_matches_recompute(llava):
    first = job(llava, "turn one", 6, Recorder())
    first.keep_cache = True
    generate_batch(llava, [first])
    done = first.channel.result
    assert done.cache is not None and len(done.cached_ids) == done.prompt_tokens + 5
    history = [
        *conversation("turn one"),
        ChatMessage(Role.ASSISTANT, (TextPart(done.text),)),
        ChatMessage(Role.USER, (ImagePart(Image.new("RGB", (30, 30), (0, 90, 200))), TextPart("turn two"))),
    ]
    fitted = fit_context(llava, history, 8)
    reuse = reuse_cache(llava, fitted.inputs, 2, done.cache, done.cached_ids)
    assert reuse is not None and reuse.cached_tokens >= done.prompt_tokens
    assert reuse.inputs["pixel_values"].shape[0] == 1  # the first image is in the cache already
    params = SamplingParams(max_new_tokens=8, min_new_tokens=8)
    cached = GenerationJob("llava", reuse.inputs, params, 8, Recorder(), cache=reuse.cache)  # type: ignore[arg-type]
    cached.cached_tokens = reuse.cached_tokens
    full = GenerationJob("llava", fitted.inputs, params, 8, Recorder())  # type: ignore[arg-type]
    generate_batch(llava, [cached])
    generate_batch(llava, [full])
    assert cached.channel.token_ids == full.channel.token_ids
    assert cached.channel.result.cached_prompt_tokens == reuse.cached_tokens
