"""The vision-language service on a real gRPC server (127.0.0.1, ephemeral ports) with the tiny
random-weight LLaVA and LLaVA-NeXT of the test bed. Outputs are garbage: tests compare them with
references (raw `generate`, unbatched runs, recomputed history) and count tokens with min_new_tokens."""

from __future__ import annotations

import asyncio
import io
import threading
import urllib.request

import grpc
import pytest
import torch
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from lumiserve.common.v1 import common_pb2
from lumiserve.vision_language.v1 import vision_language_pb2 as pb
from lumiserve.vision_language.v1 import vision_language_pb2_grpc as pb_grpc
from services.common.errors import status_details
from services.common.tenancy import TENANT_METADATA_KEY
from services.vision_language.main import build
from services.vision_language.settings import VisionLanguageSettings

SMALL_WINDOW = 160


def png(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", size, color)
    image.putpixel((1, 1), (color[2], color[0], color[1]))  # not flat: images differ in more than colour
    image.save(buffer, "PNG")
    return buffer.getvalue()


def image_part(color=(200, 30, 30), size=(40, 30)) -> pb.ContentPart:
    return pb.ContentPart(image=common_pb2.Image(data=png(color, size)))


def text_part(text: str) -> pb.ContentPart:
    return pb.ContentPart(text=text)


def user(*parts: pb.ContentPart) -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, content=list(parts))


def assistant(text: str) -> pb.Message:
    return pb.Message(role=pb.ROLE_ASSISTANT, content=[text_part(text)])


def system(text: str) -> pb.Message:
    return pb.Message(role=pb.ROLE_SYSTEM, content=[text_part(text)])


def tokens(n: int, **extra) -> pb.SamplingParameters:
    return pb.SamplingParameters(max_new_tokens=n, min_new_tokens=n, **extra)


@pytest.fixture(scope="module")
async def vlm(tiny_models):
    settings = VisionLanguageSettings(
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        models=[
            f"llava={tiny_models.llava}",
            f"llava-next={tiny_models.llava_next}",
            f"llava-small={tiny_models.llava};context_window={SMALL_WINDOW}",
        ],
        max_images_per_request=4,
        max_image_pixels=512 * 512,
        max_new_tokens_limit=3000,
        torch_threads=1,
    )
    settings.validate()
    host, plane = build(settings)
    await host.start()
    await plane.start()
    await host.set_serving(True)
    channel = grpc.aio.insecure_channel(host.address)
    yield host, plane, pb_grpc.VisionLanguageServiceStub(channel)
    await channel.close()
    await plane.stop()
    await host.drain(grace=0)


@pytest.fixture(scope="module")
def reference(tiny_models):
    """The same tiny models loaded in-process, for raw `generate` references."""
    loaded = {}
    for name, folder in (("llava", tiny_models.llava), ("llava-next", tiny_models.llava_next)):
        model = AutoModelForImageTextToText.from_pretrained(folder, use_safetensors=True).eval()
        loaded[name] = (model, AutoProcessor.from_pretrained(folder))
    return loaded


def raw_generate(
    reference, model: str, conversation: list[dict], images: list, n: int
) -> tuple[int, list[int]]:
    """(prompt tokens, greedy token ids) straight from transformers."""
    hf_model, processor = reference[model]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, images=images or None, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = hf_model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    width = inputs["input_ids"].shape[1]
    return width, out[0, width:].tolist()


async def chat(stub, request: pb.ChatRequest, metadata=()) -> tuple[list[pb.ChatResponse], pb.Completion]:
    events = [event async for event in stub.Chat(request, metadata=metadata)]
    assert events[-1].final and events[-1].HasField("completion")
    assert not any(e.final for e in events[:-1])
    return events[:-1], events[-1].completion


async def expect_error(call, code: grpc.StatusCode, field: str | None = None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        result = call()
        if hasattr(result, "__aiter__"):
            [e async for e in result]
        else:
            await result
    error = excinfo.value
    assert error.code() == code, error.details()
    if field is not None:
        (bad_request,) = [d for d in status_details(error) if isinstance(d, error_details_pb2.BadRequest)]
        assert bad_request.field_violations[0].field == field, error.details()
    return error


def block_worker(plane, model: str = "llava") -> threading.Event:
    """Occupies the device thread so that requests queue up; set the event to release it."""
    release = threading.Event()
    device = plane.models.get(model).device
    plane._worker(device).queue.run_task(release.wait)
    return release


# ---------------------------------------------------------------- streaming and usage


async def test_chat_streams_token_deltas_then_usage(vlm, reference):
    _, _, stub = vlm
    request = pb.ChatRequest(
        model="llava", messages=[user(image_part(), text_part("What is this?"))], sampling=tokens(24)
    )
    deltas, completion = await chat(stub, request)
    assert len(deltas) >= 2  # streamed, not one blob
    ids = [t for d in deltas for t in d.delta.token_ids]
    assert len(ids) == completion.usage.completion_tokens == 24
    assert "".join(d.delta.text for d in deltas) == completion.text
    assert completion.finish_reason == pb.FINISH_REASON_LENGTH
    prompt_tokens, expected = raw_generate(
        reference,
        "llava",
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}],
        [Image.open(io.BytesIO(request.messages[0].content[0].image.data)).convert("RGB")],
        24,
    )
    assert ids == expected
    usage = completion.usage
    assert usage.prompt_tokens == prompt_tokens
    assert usage.time_to_first_token_seconds > 0 and usage.tokens_per_second > 0
    assert usage.total_seconds >= usage.time_to_first_token_seconds
    assert all(d.request_id == deltas[0].request_id for d in deltas) and deltas[0].request_id


async def test_client_request_id_is_echoed(vlm):
    _, _, stub = vlm
    deltas, _ = await chat(
        stub,
        pb.ChatRequest(model="llava", messages=[user(text_part("hi"))], sampling=tokens(2), request_id="r-1"),
    )
    assert {d.request_id for d in deltas} == {"r-1"}


async def test_empty_model_uses_the_default_and_text_only_works(vlm):
    _, _, stub = vlm
    _, completion = await chat(stub, pb.ChatRequest(messages=[user(text_part("hello"))], sampling=tokens(3)))
    assert completion.usage.completion_tokens == 3


# ---------------------------------------------------------------- multi-image, any-res


@pytest.mark.parametrize("model", ["llava", "llava-next"])
async def test_images_in_one_message_and_across_turns_in_order(vlm, reference, model):
    _, _, stub = vlm
    colours = [(220, 20, 20), (20, 220, 20), (20, 20, 220)]
    sizes = [(40, 30), (64, 32), (32, 64)]  # LLaVA-NeXT: different any-res grids
    messages = [
        user(image_part(colours[0], sizes[0]), text_part("first")),
        assistant("a red one"),
        user(image_part(colours[1], sizes[1]), image_part(colours[2], sizes[2]), text_part("and these?")),
    ]
    _, completion = await chat(stub, pb.ChatRequest(model=model, messages=messages, sampling=tokens(12)))
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "first"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a red one"}]},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "and these?"}],
        },
    ]
    images = [Image.open(io.BytesIO(png(c, s))).convert("RGB") for c, s in zip(colours, sizes, strict=True)]
    prompt_tokens, expected = raw_generate(reference, model, conversation, images, 12)
    assert completion.usage.prompt_tokens == prompt_tokens
    events, _ = await chat(stub, pb.ChatRequest(model=model, messages=messages, sampling=tokens(12)))
    assert [t for e in events for t in e.delta.token_ids] == expected


async def test_llava_next_any_res_grids_give_different_image_token_counts(vlm):
    _, _, stub = vlm
    counts = {}
    for size in [(32, 32), (64, 32), (32, 64), (64, 64)]:
        _, completion = await chat(
            stub,
            pb.ChatRequest(
                model="llava-next", messages=[user(image_part(size=size), text_part("?"))], sampling=tokens(1)
            ),
        )
        counts[size] = completion.usage.prompt_tokens
    # 16 tokens per 32x32 tile plus the base image: a 2x2 grid holds more tiles than a 1x2 grid
    assert counts[(64, 64)] > counts[(64, 32)] > counts[(32, 32)]
    assert counts[(64, 32)] != counts[(32, 64)] or counts[(64, 32)] > counts[(32, 32)]


# ---------------------------------------------------------------- presets


async def test_task_presets_are_listed_and_expand_the_prompt(vlm, reference):
    _, _, stub = vlm
    presets = (await stub.ListTaskPresets(pb.ListTaskPresetsRequest(model="llava"))).presets
    by_preset = {p.preset: p for p in presets}
    assert set(by_preset) == {
        pb.TASK_PRESET_CAPTION_SHORT,
        pb.TASK_PRESET_CAPTION_DETAILED,
        pb.TASK_PRESET_VQA,
        pb.TASK_PRESET_OCR,
    }
    assert all(p.prompt and p.default_max_new_tokens for p in presets)
    image = image_part()
    events, completion = await chat(
        stub,
        pb.ChatRequest(model="llava", messages=[user(image)], preset=pb.TASK_PRESET_OCR, sampling=tokens(6)),
    )
    ocr_prompt = by_preset[pb.TASK_PRESET_OCR].prompt
    prompt_tokens, expected = raw_generate(
        reference,
        "llava",
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ocr_prompt}]}],
        [Image.open(io.BytesIO(image.image.data)).convert("RGB")],
        6,
    )
    assert completion.usage.prompt_tokens == prompt_tokens
    assert [t for e in events for t in e.delta.token_ids] == expected
    vqa = pb.ChatRequest(
        model="llava",
        messages=[user(image, text_part("What colour?"))],
        preset=pb.TASK_PRESET_VQA,
        sampling=tokens(2),
    )
    _, completion = await chat(stub, vqa)
    assert completion.usage.completion_tokens == 2


async def test_preset_default_max_new_tokens_applies(vlm):
    _, _, stub = vlm
    presets = (await stub.ListTaskPresets(pb.ListTaskPresetsRequest(model="llava"))).presets
    short = next(p for p in presets if p.preset == pb.TASK_PRESET_CAPTION_SHORT)
    _, completion = await chat(
        stub,
        pb.ChatRequest(
            model="llava",
            messages=[user(image_part())],
            preset=pb.TASK_PRESET_CAPTION_SHORT,
            sampling=pb.SamplingParameters(min_new_tokens=short.default_max_new_tokens),
        ),
    )
    assert completion.usage.completion_tokens == short.default_max_new_tokens
    assert completion.finish_reason == pb.FINISH_REASON_LENGTH


# ---------------------------------------------------------------- sampling and stopping


async def test_seeded_sampling_is_deterministic(vlm):
    _, _, stub = vlm

    async def sample(seed: int) -> list[int]:
        sampling = tokens(16, temperature=1.0, top_p=0.95, top_k=100, repetition_penalty=1.1, seed=seed)
        events, _ = await chat(
            stub, pb.ChatRequest(model="llava", messages=[user(text_part("hi"))], sampling=sampling)
        )
        return [t for e in events for t in e.delta.token_ids]

    first, again, other = await sample(7), await sample(7), await sample(8)
    assert first == again
    assert first != other


async def test_seeded_request_gives_the_same_tokens_when_batched_with_others(vlm):
    _, plane, stub = vlm
    sampling = tokens(10, temperature=0.8, seed=123)
    request = pb.ChatRequest(model="llava", messages=[user(image_part(), text_part("x"))], sampling=sampling)
    alone, _ = await chat(stub, request)
    release = block_worker(plane)
    others = [
        pb.ChatRequest(
            model="llava", messages=[user(image_part((i, 90, 9)), text_part("y" * i))], sampling=tokens(10)
        )
        for i in range(1, 4)
    ]
    calls = [asyncio.ensure_future(chat(stub, r)) for r in [request, *others]]
    await asyncio.sleep(0.3)
    release.set()
    (batched, _), *_ = await asyncio.gather(*calls)
    assert [t for e in batched for t in e.delta.token_ids] == [t for e in alone for t in e.delta.token_ids]


async def test_stop_sequence_ends_the_reply_before_it(vlm):
    _, _, stub = vlm
    request = pb.ChatRequest(
        model="llava", messages=[user(image_part(), text_part("Say"))], sampling=tokens(40)
    )
    _, full = await chat(stub, request)
    text = full.text
    stop = next(text[i : i + 2] for i in range(3, len(text) - 2) if text[i : i + 2].strip())
    cut = text.index(stop)
    request.sampling.CopyFrom(pb.SamplingParameters(max_new_tokens=40, stop=[stop, "never-appears"]))
    events, completion = await chat(stub, request)
    assert completion.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert completion.text == text[:cut]
    assert "".join(e.delta.text for e in events) == text[:cut]
    assert completion.usage.completion_tokens < full.usage.completion_tokens


async def test_max_new_tokens_without_minimum_finishes_by_length_or_stop(vlm):
    _, _, stub = vlm
    _, completion = await chat(
        stub,
        pb.ChatRequest(
            model="llava", messages=[user(text_part("hi"))], sampling=pb.SamplingParameters(max_new_tokens=5)
        ),
    )
    assert completion.usage.completion_tokens <= 5
    if completion.usage.completion_tokens < 5:
        assert completion.finish_reason == pb.FINISH_REASON_STOP
    else:
        assert completion.finish_reason == pb.FINISH_REASON_LENGTH


# ---------------------------------------------------------------- batching


async def test_concurrent_requests_are_batched_with_the_same_greedy_outputs(vlm):
    _, plane, stub = vlm
    requests = [
        pb.ChatRequest(
            model=model,
            messages=[user(image_part((40 * i, 200 - 30 * i, 90), size), text_part("word " * i + "?"))],
            sampling=tokens(12),
        )
        for model, size in (("llava", (40, 30)), ("llava-next", (64, 32)))
        for i in range(1, 5)
    ]
    alone = [await chat(stub, r) for r in requests]
    registry = vlm[0].metrics_registry

    def batches(model: str) -> tuple[float, float]:
        labels = {"model": model}
        return (
            registry.get_sample_value("lumiserve_vlm_batch_size_count", labels) or 0,
            registry.get_sample_value("lumiserve_vlm_batch_size_sum", labels) or 0,
        )

    before = {m: batches(m) for m in ("llava", "llava-next")}
    release = block_worker(plane)
    calls = [asyncio.ensure_future(chat(stub, r)) for r in requests]
    await asyncio.sleep(0.3)
    assert plane.load_snapshot()["queue_depth"]["llava"] == 4
    release.set()
    together = await asyncio.gather(*calls)
    for (events_alone, done_alone), (events_batched, done_batched) in zip(alone, together, strict=True):
        assert [t for e in events_batched for t in e.delta.token_ids] == [
            t for e in events_alone for t in e.delta.token_ids
        ]
        assert done_batched.text == done_alone.text
        assert done_batched.usage.prompt_tokens == done_alone.usage.prompt_tokens
    for model in ("llava", "llava-next"):
        count, total = batches(model)
        assert (count - before[model][0], total - before[model][1]) == (1, 4)  # one batch of four


async def test_queue_full_is_resource_exhausted(vlm):
    _, plane, stub = vlm
    queue = plane._worker(plane.models.get("llava").device).queue
    release = block_worker(plane)
    queue.max_queue, saved = 2, queue.max_queue
    try:
        waiting = [
            asyncio.ensure_future(
                chat(stub, pb.ChatRequest(model="llava", messages=[user(text_part("q"))], sampling=tokens(2)))
            )
            for _ in range(2)
        ]
        await asyncio.sleep(0.2)
        error = await expect_error(
            lambda: stub.Chat(pb.ChatRequest(model="llava", messages=[user(text_part("q"))])),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert "queue" in error.details()
    finally:
        queue.max_queue = saved
        release.set()
    for done in await asyncio.gather(*waiting):
        assert done[1].usage.completion_tokens == 2


# ---------------------------------------------------------------- cancellation and deadlines


def generation_counts(registry, reason: str) -> tuple[float, float]:
    labels = {"model": "llava", "finish_reason": reason}
    return (
        registry.get_sample_value("lumiserve_vlm_completion_tokens_per_request_count", labels) or 0,
        registry.get_sample_value("lumiserve_vlm_completion_tokens_per_request_sum", labels) or 0,
    )


async def wait_for(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_client_cancel_stops_generation(vlm):
    host, plane, stub = vlm
    registry = host.metrics_registry
    before = generation_counts(registry, "cancelled")
    call = stub.Chat(pb.ChatRequest(model="llava", messages=[user(text_part("long"))], sampling=tokens(2500)))
    received = 0
    async for event in call:
        received += len(event.delta.token_ids)
        if received >= 3:
            call.cancel()
            break
    await wait_for(lambda: generation_counts(registry, "cancelled")[0] == before[0] + 1)
    generated = generation_counts(registry, "cancelled")[1] - before[1]
    assert received <= generated < 2500  # stopped long before the end
    await wait_for(lambda: plane.load_snapshot()["in_flight"] == 0)
    _, completion = await chat(
        stub, pb.ChatRequest(model="llava", messages=[user(text_part("next"))], sampling=tokens(2))
    )
    assert completion.usage.completion_tokens == 2


async def test_deadline_stops_generation(vlm):
    host, _, stub = vlm
    registry = host.metrics_registry
    before = generation_counts(registry, "cancelled")
    await expect_error(
        lambda: stub.Chat(
            pb.ChatRequest(model="llava", messages=[user(text_part("long"))], sampling=tokens(2900)),
            timeout=0.3,
        ),
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
    await wait_for(lambda: generation_counts(registry, "cancelled")[0] == before[0] + 1)
    assert generation_counts(registry, "cancelled")[1] - before[1] < 2900


async def test_cancel_while_queued_never_starts(vlm):
    _, plane, stub = vlm
    release = block_worker(plane)
    call = stub.Chat(pb.ChatRequest(model="llava", messages=[user(text_part("q"))], sampling=tokens(5)))
    reader = asyncio.ensure_future(call.read())
    await wait_for(lambda: plane.load_snapshot()["queue_depth"].get("llava") == 1)
    call.cancel()
    await wait_for(lambda: plane.load_snapshot()["queue_depth"].get("llava") == 0)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await reader


# ---------------------------------------------------------------- sessions


def turn_one() -> pb.Message:
    return user(image_part((10, 160, 200)), text_part("What is in the picture?"))


async def test_session_reuses_the_kv_cache_with_the_same_output_as_recomputing(vlm):
    _, _, stub = vlm
    opening = [system("You are terse.")]
    session = (await stub.CreateSession(pb.CreateSessionRequest(model="llava", messages=opening))).session
    assert session.session_id and session.context_window == 4096
    _, first = await chat(
        stub, pb.ChatRequest(session_id=session.session_id, messages=[turn_one()], sampling=tokens(8))
    )
    assert first.session_id == session.session_id and first.usage.cached_prompt_tokens == 0
    second_turn = user(text_part("Are you sure?"))
    events, second = await chat(
        stub, pb.ChatRequest(session_id=session.session_id, messages=[second_turn], sampling=tokens(10))
    )
    assert second.usage.cached_prompt_tokens >= first.usage.prompt_tokens  # at least the first prompt
    assert second.usage.cached_prompt_tokens < second.usage.prompt_tokens
    stateless = [*opening, turn_one(), assistant(first.text), second_turn]
    recomputed, full = await chat(
        stub, pb.ChatRequest(model="llava", messages=stateless, sampling=tokens(10))
    )
    assert full.usage.cached_prompt_tokens == 0
    assert full.usage.prompt_tokens == second.usage.prompt_tokens
    assert [t for e in events for t in e.delta.token_ids] == [
        t for e in recomputed for t in e.delta.token_ids
    ]
    got = (await stub.GetSession(pb.GetSessionRequest(session_id=session.session_id))).session
    assert [m.role for m in got.messages] == [
        pb.ROLE_SYSTEM, pb.ROLE_USER, pb.ROLE_ASSISTANT, pb.ROLE_USER, pb.ROLE_ASSISTANT
    ]  # fmt: skip
    assert got.messages[2].content[0].text == first.text
    assert got.messages[1].content[0].image.data == b"" and got.messages[1].content[0].image.width == 40
    with_images = (
        await stub.GetSession(pb.GetSessionRequest(session_id=session.session_id, include_images=True))
    ).session
    assert with_images.messages[1].content[0].image.data == turn_one().content[0].image.data
    assert got.context_tokens == second.usage.prompt_tokens + second.usage.completion_tokens


async def test_session_with_a_new_image_in_a_later_turn_matches_recompute(vlm):
    _, _, stub = vlm
    for model in ("llava", "llava-next"):
        session = (await stub.CreateSession(pb.CreateSessionRequest(model=model))).session
        _, first = await chat(
            stub, pb.ChatRequest(session_id=session.session_id, messages=[turn_one()], sampling=tokens(6))
        )
        later = user(image_part((250, 250, 0), (64, 32)), text_part("and now?"))
        events, second = await chat(
            stub, pb.ChatRequest(session_id=session.session_id, messages=[later], sampling=tokens(6))
        )
        assert second.usage.cached_prompt_tokens > 0
        recomputed, _ = await chat(
            stub,
            pb.ChatRequest(
                model=model, messages=[turn_one(), assistant(first.text), later], sampling=tokens(6)
            ),
        )
        assert [t for e in events for t in e.delta.token_ids] == [
            t for e in recomputed for t in e.delta.token_ids
        ]


async def test_sessions_belong_to_their_tenant(vlm):
    _, _, stub = vlm
    alice, bob = ((TENANT_METADATA_KEY, "alice"),), ((TENANT_METADATA_KEY, "bob"),)
    session = (await stub.CreateSession(pb.CreateSessionRequest(model="llava"), metadata=alice)).session
    sid = session.session_id
    assert (
        await stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=alice)
    ).session.session_id == sid
    await expect_error(
        lambda: stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=bob), grpc.StatusCode.NOT_FOUND
    )
    await expect_error(
        lambda: stub.Chat(pb.ChatRequest(session_id=sid, messages=[user(text_part("hi"))]), metadata=bob),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        lambda: stub.DeleteSession(pb.DeleteSessionRequest(session_id=sid), metadata=bob),
        grpc.StatusCode.NOT_FOUND,
    )
    listed = (await stub.ListSessions(pb.ListSessionsRequest(), metadata=bob)).sessions
    assert sid not in [s.session_id for s in listed]
    listed = (await stub.ListSessions(pb.ListSessionsRequest(), metadata=alice)).sessions
    assert sid in [s.session_id for s in listed]
    await stub.DeleteSession(pb.DeleteSessionRequest(session_id=sid), metadata=alice)
    await expect_error(
        lambda: stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=alice),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_list_sessions_pages(vlm):
    _, _, stub = vlm
    tenant = ((TENANT_METADATA_KEY, "pager"),)
    ids = [
        (await stub.CreateSession(pb.CreateSessionRequest(model="llava"), metadata=tenant)).session.session_id
        for _ in range(3)
    ]
    first = await stub.ListSessions(
        pb.ListSessionsRequest(pagination=common_pb2.Pagination(page_size=2)), metadata=tenant
    )
    assert first.page_info.total_size == 3 and first.page_info.next_page_token
    second = await stub.ListSessions(
        pb.ListSessionsRequest(
            pagination=common_pb2.Pagination(page_size=2, page_token=first.page_info.next_page_token)
        ),
        metadata=tenant,
    )
    assert [s.session_id for s in [*first.sessions, *second.sessions]] == ids
    assert not second.page_info.next_page_token


async def test_session_eviction_least_recently_used(vlm):
    _, plane, stub = vlm
    saved, plane.sessions.max_sessions = plane.sessions.max_sessions, 2  # evicts older sessions too
    try:
        tenant = ((TENANT_METADATA_KEY, "evict"),)
        a = (
            await stub.CreateSession(pb.CreateSessionRequest(model="llava"), metadata=tenant)
        ).session.session_id
        b = (
            await stub.CreateSession(pb.CreateSessionRequest(model="llava"), metadata=tenant)
        ).session.session_id
        await stub.GetSession(pb.GetSessionRequest(session_id=a), metadata=tenant)  # a is now the most recent
        c = (
            await stub.CreateSession(pb.CreateSessionRequest(model="llava"), metadata=tenant)
        ).session.session_id
        await expect_error(
            lambda: stub.GetSession(pb.GetSessionRequest(session_id=b), metadata=tenant),
            grpc.StatusCode.NOT_FOUND,
        )
        for sid in (a, c):
            await stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=tenant)
    finally:
        plane.sessions.max_sessions = saved


# ---------------------------------------------------------------- context window


async def test_history_over_the_context_window_drops_the_oldest_turns(vlm):
    _, _, stub = vlm
    session = (
        await stub.CreateSession(pb.CreateSessionRequest(model="llava-small", messages=[system("Be brief.")]))
    ).session
    assert session.context_window == SMALL_WINDOW
    truncations = []
    for i in range(6):
        turn = user(image_part((30 * i, 50, 90)), text_part(f"Question {i}?"))
        _, completion = await chat(
            stub, pb.ChatRequest(session_id=session.session_id, messages=[turn], sampling=tokens(20))
        )
        assert completion.usage.prompt_tokens + 20 <= SMALL_WINDOW
        if completion.HasField("truncation"):
            truncations.append(completion.truncation)
    assert truncations, "the history never overflowed the window"
    first = truncations[0]
    assert first.context_window == SMALL_WINDOW
    assert first.dropped_messages >= 2 and first.dropped_messages % 2 == 0  # whole turns
    assert first.dropped_tokens > 0
    history = (await stub.GetSession(pb.GetSessionRequest(session_id=session.session_id))).session.messages
    assert history[0].role == pb.ROLE_SYSTEM  # system messages are never dropped
    assert history[-2].content[1].text == "Question 5?"
    assert len(history) < 1 + 2 * 6


async def test_stateless_history_over_the_window_is_truncated_too(vlm):
    _, _, stub = vlm
    messages = []
    for i in range(5):
        messages += [user(text_part(f"turn {i} " * 8)), assistant("ok " * 10)]
    messages.append(user(text_part("last")))
    _, completion = await chat(
        stub, pb.ChatRequest(model="llava-small", messages=messages, sampling=tokens(10))
    )
    assert completion.truncation.dropped_messages >= 2
    assert completion.usage.prompt_tokens + 10 <= SMALL_WINDOW


async def test_a_single_message_longer_than_the_window_is_invalid(vlm):
    _, _, stub = vlm
    error = await expect_error(
        lambda: stub.Chat(pb.ChatRequest(model="llava-small", messages=[user(text_part("word " * 400))])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "messages[0]",
    )
    assert f"{SMALL_WINDOW} tokens" in error.details() and "takes" in error.details()


# ---------------------------------------------------------------- captioning


async def test_caption_batch_streams_one_result_per_image_with_progress(vlm):
    _, _, stub = vlm
    items = [
        pb.CaptionItem(id=f"img-{i}", image=common_pb2.Image(data=png((50 * i, 80, 160)))) for i in range(4)
    ]
    items.insert(2, pb.CaptionItem(id="broken", image=common_pb2.Image(data=b"not an image")))
    responses = [
        r
        async for r in stub.CaptionBatch(
            pb.CaptionBatchRequest(model="llava", items=items, sampling=tokens(5))
        )
    ]
    assert [r.completed for r in responses] == [1, 2, 3, 4, 5]
    assert all(r.total == 5 for r in responses) and [r.final for r in responses] == [False] * 4 + [True]
    by_id = {r.caption.id: r.caption for r in responses}
    assert sorted(c.index for c in by_id.values()) == [0, 1, 2, 3, 4]
    assert "items[2].image" in by_id["broken"].error and not by_id["broken"].text
    for i in range(4):
        caption = by_id[f"img-{i}"]
        assert not caption.error and caption.usage.completion_tokens == 5 and caption.text


async def test_caption_batch_matches_chat_with_the_same_preset(vlm):
    _, _, stub = vlm
    image = common_pb2.Image(data=png((10, 20, 240)))
    (response,) = [
        r
        async for r in stub.CaptionBatch(
            pb.CaptionBatchRequest(
                model="llava",
                items=[pb.CaptionItem(id="x", image=image)],
                preset=pb.TASK_PRESET_CAPTION_DETAILED,
                sampling=tokens(7),
            )
        )
    ]
    _, completion = await chat(
        stub,
        pb.ChatRequest(
            model="llava",
            messages=[user(pb.ContentPart(image=image))],
            preset=pb.TASK_PRESET_CAPTION_DETAILED,
            sampling=tokens(7),
        ),
    )
    assert response.caption.text == completion.text


# ---------------------------------------------------------------- models


async def test_list_load_and_unload_models(vlm, tiny_models):
    _, _, stub = vlm
    listed = (await stub.ListModels(pb.ListModelsRequest())).cache
    names = {m.model for m in listed.models}
    assert {"llava", "llava-next", "llava-small"} <= names
    llava = next(m for m in listed.models if m.model == "llava")
    assert llava.state == common_pb2.MODEL_STATE_READY and llava.memory_bytes > 0 and llava.device == "cpu"
    assert llava.precision == common_pb2.PRECISION_FP32 and "chat" in llava.tasks
    loaded = await stub.LoadModel(
        pb.LoadModelRequest(
            spec=common_pb2.ModelLoadSpec(
                model="extra", source=str(tiny_models.llava_next), precision=common_pb2.PRECISION_BF16
            )
        )
    )
    assert loaded.model.model == "extra" and loaded.model.precision == common_pb2.PRECISION_BF16
    _, completion = await chat(
        stub, pb.ChatRequest(model="extra", messages=[user(image_part(), text_part("?"))], sampling=tokens(3))
    )
    assert completion.usage.completion_tokens == 3
    await stub.UnloadModel(pb.UnloadModelRequest(model="extra"))
    assert "extra" not in {m.model for m in (await stub.ListModels(pb.ListModelsRequest())).cache.models}
    # a known model that was unloaded loads again on demand
    _, completion = await chat(
        stub, pb.ChatRequest(model="extra", messages=[user(text_part("?"))], sampling=tokens(2))
    )
    assert completion.usage.completion_tokens == 2
    await stub.UnloadModel(pb.UnloadModelRequest(model="extra"))


# ---------------------------------------------------------------- invalid input


def _chat(**fields) -> pb.ChatRequest:
    fields.setdefault("model", "llava")
    fields.setdefault("messages", [user(text_part("hi"))])
    return pb.ChatRequest(**fields)


INVALID_CHATS = {
    "undecodable image": (
        _chat(messages=[user(pb.ContentPart(image=common_pb2.Image(data=b"garbage")))]),
        "messages[0].content[0].image",
    ),
    "oversized image": (_chat(messages=[user(image_part(size=(600, 600)))]), "messages[0].content[0].image"),
    "too many images": (_chat(messages=[user(*[image_part() for _ in range(5)])]), "messages"),
    "no messages": (_chat(messages=[]), "messages"),
    "empty message": (_chat(messages=[pb.Message(role=pb.ROLE_USER)]), "messages[0].content"),
    "blank text": (_chat(messages=[user(text_part("   "))]), "messages[0].content"),
    "empty part": (_chat(messages=[user(pb.ContentPart())]), "messages[0].content[0]"),
    "unspecified role": (_chat(messages=[pb.Message(content=[text_part("x")])]), "messages[0].role"),
    "assistant first": (_chat(messages=[assistant("x"), user(text_part("y"))]), "messages[0].role"),
    "two users": (_chat(messages=[user(text_part("x")), user(text_part("y"))]), "messages[1].role"),
    "ends with assistant": (_chat(messages=[user(text_part("x")), assistant("y")]), "messages[1].role"),
    "late system": (
        _chat(messages=[user(text_part("x")), assistant("y"), system("z"), user(text_part("w"))]),
        "messages[2].role",
    ),
    "image from assistant": (
        _chat(
            messages=[
                user(text_part("x")),
                pb.Message(role=pb.ROLE_ASSISTANT, content=[image_part()]),
                user(text_part("y")),
            ]
        ),
        "messages[1].content[0]",
    ),
    "temperature": (_chat(sampling=pb.SamplingParameters(temperature=3.0)), "sampling.temperature"),
    "top_p zero": (_chat(sampling=pb.SamplingParameters(top_p=0.0)), "sampling.top_p"),
    "top_p high": (_chat(sampling=pb.SamplingParameters(top_p=1.5)), "sampling.top_p"),
    "top_k": (_chat(sampling=pb.SamplingParameters(top_k=5000)), "sampling.top_k"),
    "repetition penalty": (
        _chat(sampling=pb.SamplingParameters(repetition_penalty=0.0)),
        "sampling.repetition_penalty",
    ),
    "max_new_tokens": (
        _chat(sampling=pb.SamplingParameters(max_new_tokens=100000)),
        "sampling.max_new_tokens",
    ),
    "min over max": (
        _chat(sampling=pb.SamplingParameters(max_new_tokens=4, min_new_tokens=5)),
        "sampling.min_new_tokens",
    ),
    "too many stops": (
        _chat(sampling=pb.SamplingParameters(stop=[str(i) for i in range(9)])),
        "sampling.stop",
    ),
    "empty stop": (_chat(sampling=pb.SamplingParameters(stop=[""])), "sampling.stop[0]"),
    "unknown preset": (_chat(preset=9), "preset"),
    "vqa without question": (
        _chat(messages=[user(image_part())], preset=pb.TASK_PRESET_VQA),
        "messages[0].content",
    ),
    "caption without image": (_chat(preset=pb.TASK_PRESET_CAPTION_SHORT), "messages[0]"),
    "request id": (_chat(request_id="x" * 200), "request_id"),
    "image token as text": (
        _chat(messages=[user(text_part("look: <image>"))]),
        "messages[0].content[0].text",
    ),
    "end of sequence as text": (
        _chat(messages=[user(text_part("a")), assistant("b</s>"), user(text_part("c"))]),
        "messages[1].content[0].text",
    ),
    "session with history": (
        _chat(session_id="s", messages=[user(text_part("a")), assistant("b"), user(text_part("c"))]),
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_CHATS))
async def test_invalid_chat_requests_are_invalid_argument_naming_the_field(vlm, case):
    _, _, stub = vlm
    request, field = INVALID_CHATS[case]
    code = grpc.StatusCode.NOT_FOUND if case == "session with history" else grpc.StatusCode.INVALID_ARGUMENT
    await expect_error(lambda: stub.Chat(request), code, field)


async def test_session_turn_must_be_one_user_message(vlm):
    _, _, stub = vlm
    sid = (await stub.CreateSession(pb.CreateSessionRequest(model="llava"))).session.session_id
    for messages, field in (
        ([user(text_part("a")), assistant("b"), user(text_part("c"))], "messages"),
        ([assistant("b")], "messages[0].role"),
    ):
        await expect_error(
            lambda m=messages: stub.Chat(pb.ChatRequest(session_id=sid, messages=m)),
            grpc.StatusCode.INVALID_ARGUMENT,
            field,
        )
    await expect_error(
        lambda: stub.Chat(
            pb.ChatRequest(session_id=sid, model="llava-next", messages=[user(text_part("a"))])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model",
    )


async def test_other_invalid_requests(vlm):
    _, _, stub = vlm
    NOT_FOUND, INVALID = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT
    await expect_error(lambda: stub.Chat(_chat(model="no-such-model")), NOT_FOUND)
    await expect_error(lambda: stub.CreateSession(pb.CreateSessionRequest(model="no-such-model")), NOT_FOUND)
    await expect_error(
        lambda: stub.CreateSession(pb.CreateSessionRequest(model="llava", ttl_seconds=10**6)),
        INVALID,
        "ttl_seconds",
    )
    await expect_error(
        lambda: stub.CreateSession(pb.CreateSessionRequest(model="llava", messages=[user(text_part("x"))])),
        INVALID,
        "messages[0].role",
    )
    await expect_error(lambda: stub.GetSession(pb.GetSessionRequest(session_id="nope")), NOT_FOUND)
    await expect_error(lambda: stub.DeleteSession(pb.DeleteSessionRequest(session_id="nope")), NOT_FOUND)
    await expect_error(
        lambda: stub.ListSessions(pb.ListSessionsRequest(pagination=common_pb2.Pagination(page_size=5000))),
        INVALID,
        "pagination.page_size",
    )
    await expect_error(
        lambda: stub.ListSessions(pb.ListSessionsRequest(pagination=common_pb2.Pagination(page_token="zz"))),
        INVALID,
        "pagination.page_token",
    )
    await expect_error(lambda: stub.CaptionBatch(pb.CaptionBatchRequest(model="llava")), INVALID, "items")
    await expect_error(lambda: stub.ListTaskPresets(pb.ListTaskPresetsRequest(model="nope")), NOT_FOUND)
    await expect_error(lambda: stub.UnloadModel(pb.UnloadModelRequest(model="nope")), NOT_FOUND)
    await expect_error(
        lambda: stub.LoadModel(pb.LoadModelRequest(spec=common_pb2.ModelLoadSpec(model="nope"))), NOT_FOUND
    )
    await expect_error(
        lambda: stub.LoadModel(
            pb.LoadModelRequest(spec=common_pb2.ModelLoadSpec(model="x", source="/no/such/folder"))
        ),
        NOT_FOUND,
    )
    await expect_error(
        lambda: stub.LoadModel(
            pb.LoadModelRequest(
                spec=common_pb2.ModelLoadSpec(model="llava", precision=common_pb2.PRECISION_INT8)
            )
        ),
        INVALID,
        "spec.precision",
    )
    # the service is still up and answering
    _, completion = await chat(stub, _chat(sampling=tokens(1)))
    assert completion.usage.completion_tokens == 1


# ---------------------------------------------------------------- metrics, health, load report


async def test_metrics_endpoint_reports_queue_tokens_batches_and_sessions(vlm):
    host, _, stub = vlm
    await chat(stub, _chat(sampling=tokens(4)))
    url = f"http://127.0.0.1:{host.metrics_port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    assert 'lumiserve_queue_depth{family="vision_language",model="llava"} 0.0' in text
    for name in (
        "lumiserve_queue_seconds_count",
        "lumiserve_vlm_time_to_first_token_seconds_count",
        "lumiserve_vlm_tokens_per_second_count",
        "lumiserve_vlm_prompt_tokens_total",
        "lumiserve_vlm_completion_tokens_total",
        "lumiserve_vlm_batch_size_count",
        "lumiserve_vlm_active_sessions",
        "lumiserve_loaded_models",
    ):
        assert name in text, name
    registry = host.metrics_registry
    assert registry.get_sample_value("lumiserve_vlm_completion_tokens_total", {"model": "llava"}) >= 4


async def test_load_snapshot_reports_queues_in_flight_and_models(vlm):
    _, plane, _ = vlm
    snapshot = plane.load_snapshot()
    assert {"llava", "llava-next", "llava-small"} <= set(snapshot["loaded_models"])
    assert snapshot["queue_depth"]["llava"] == 0 and snapshot["in_flight"] == 0


async def test_health_is_not_serving_while_models_load(tiny_models):
    from services.common.server import run_until_signal
    from services.vision_language.model_cache import load_model

    gate = threading.Event()

    def slow_loader(spec, device, max_images):
        gate.wait(10)
        return load_model(spec, device, max_images)

    settings = VisionLanguageSettings(
        host="127.0.0.1",
        port=0,
        metrics_port=-1,
        models=[f"llava={tiny_models.llava}"],
        drain_grace_seconds=1,
    )
    host, plane = build(settings, loader=slow_loader)
    runner = asyncio.create_task(run_until_signal(host, plane.start, plane.stop))
    await wait_for(lambda: host.port is not None)
    async with grpc.aio.insecure_channel(host.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = (await health.Check(health_pb2.HealthCheckRequest())).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        gate.set()
        async with asyncio.timeout(10):
            while (
                await health.Check(health_pb2.HealthCheckRequest())
            ).status != health_pb2.HealthCheckResponse.SERVING:
                await asyncio.sleep(0.02)
    import os
    import signal

    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(runner, 10) == 0
