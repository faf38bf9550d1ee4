"""The gateway in front of a real registry and real model services (separate processes, tiny models).

Order matters: the last test kills a replica.
"""

from __future__ import annotations

import asyncio
import signal

import grpc
import pytest
from google.rpc import error_details_pb2

from lumiserve.diffusion.v1 import diffusion_pb2, diffusion_pb2_grpc
from lumiserve.model_registry.v1 import model_registry_pb2, model_registry_pb2_grpc
from lumiserve.vision_language.v1 import vision_language_pb2 as vl_pb2
from lumiserve.vision_language.v1 import vision_language_pb2_grpc as vl_grpc
from services.common.errors import status_details
from tests.e2e.conftest import api_key, metric, scrape

pytestmark = pytest.mark.slow


def _chat(tokens: int, session_id: str = "", text: str = "Describe the picture.") -> vl_pb2.ChatRequest:
    message = vl_pb2.Message(role=vl_pb2.ROLE_USER, content=[vl_pb2.ContentPart(text=text)])
    return vl_pb2.ChatRequest(
        model="" if session_id else "tiny-llava",
        session_id=session_id,
        messages=[message],
        sampling=vl_pb2.SamplingParameters(max_new_tokens=tokens, min_new_tokens=tokens, temperature=0),
    )


def _chat_calls(process) -> float:
    return metric(scrape(process), "lumiserve_rpc_requests_total", method="Chat", code="OK")


@pytest.fixture
async def channel(stack):
    async with grpc.aio.insecure_channel(stack.gateway.address) as channel:
        yield channel


async def test_concurrent_chats_spread_over_both_replicas(stack, channel):
    stub = vl_grpc.VisionLanguageServiceStub(channel)
    before = [_chat_calls(p) for p in stack.vlm]

    async def one():
        return [r async for r in stub.Chat(_chat(200), metadata=api_key("alice"))]

    results = await asyncio.gather(*(one() for _ in range(4)))
    assert all(r[-1].completion.usage.completion_tokens == 200 for r in results)
    added = [_chat_calls(p) - b for p, b in zip(stack.vlm, before, strict=True)]
    assert sum(added) == 4
    assert min(added) >= 1, f"least-loaded routing should use both replicas, got {added}"


async def test_session_is_pinned_to_its_replica_and_owned_by_its_tenant(stack, channel):
    stub = vl_grpc.VisionLanguageServiceStub(channel)
    session = (
        await stub.CreateSession(vl_pb2.CreateSessionRequest(model="tiny-llava"), metadata=api_key("alice"))
    ).session.session_id
    before = [_chat_calls(p) for p in stack.vlm]
    for turn in range(3):
        events = [r async for r in stub.Chat(_chat(4, session, f"turn {turn}"), metadata=api_key("alice"))]
        assert events[-1].completion.session_id == session
    added = sorted(_chat_calls(p) - b for p, b in zip(stack.vlm, before, strict=True))
    assert added == [0, 3]
    got = await stub.GetSession(vl_pb2.GetSessionRequest(session_id=session), metadata=api_key("alice"))
    assert len(got.session.messages) == 6
    with pytest.raises(grpc.aio.AioRpcError) as other_tenant:
        await stub.GetSession(vl_pb2.GetSessionRequest(session_id=session), metadata=api_key("bob"))
    assert other_tenant.value.code() == grpc.StatusCode.NOT_FOUND


async def test_cancelling_the_client_call_stops_the_backend_job(stack, channel):
    stub = diffusion_pb2_grpc.DiffusionServiceStub(channel)
    request = diffusion_pb2.GenerateRequest(
        model="tiny-sd", prompt="a red circle", width=64, height=64, steps=150, seed=1, job_id="e2e-cancel"
    )
    call = stub.Generate(request, metadata=api_key("alice"))
    async for event in call:
        if event.HasField("progress") and event.progress.step >= 2:
            break
    call.cancel()
    for _ in range(100):
        job = (
            await stub.GetJob(diffusion_pb2.GetJobRequest(job_id="e2e-cancel"), metadata=api_key("alice"))
        ).job
        if job.state == diffusion_pb2.JOB_STATE_CANCELLED:
            break
        await asyncio.sleep(0.1)
    assert job.state == diffusion_pb2.JOB_STATE_CANCELLED
    assert job.step < 100, f"the backend kept stepping after the cancel: step {job.step}"
    with pytest.raises(grpc.aio.AioRpcError) as other_tenant:  # bob neither sees nor cancels alice's job
        await stub.Cancel(diffusion_pb2.CancelRequest(job_id="e2e-cancel"), metadata=api_key("bob"))
    assert other_tenant.value.code() == grpc.StatusCode.NOT_FOUND


async def test_auth_and_roles(stack, channel):
    diffusion = diffusion_pb2_grpc.DiffusionServiceStub(channel)
    registry = model_registry_pb2_grpc.ModelRegistryServiceStub(channel)
    codes = {}
    for name, metadata in [("none", ()), ("wrong", (("authorization", "Bearer nope"),))]:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await diffusion.ListModels(diffusion_pb2.ListModelsRequest(), metadata=metadata)
        codes[name] = error.value.code()
    assert codes == {"none": grpc.StatusCode.UNAUTHENTICATED, "wrong": grpc.StatusCode.UNAUTHENTICATED}
    assert (
        await diffusion.ListModels(diffusion_pb2.ListModelsRequest(), metadata=api_key("alice"))
    ).cache.models
    model = model_registry_pb2.Model(id="e2e-model", family=1, source="some/repo", tasks=["txt2img"])
    for call in (
        diffusion.UnloadModel(diffusion_pb2.UnloadModelRequest(model="tiny-sd"), metadata=api_key("bob")),
        registry.CreateModel(model_registry_pb2.CreateModelRequest(model=model), metadata=api_key("bob")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await call
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    created = await registry.CreateModel(
        model_registry_pb2.CreateModelRequest(model=model), metadata=api_key("ops")
    )
    assert created.model.id == "e2e-model"  # the registry honours the admin role the gateway vouches for
    listed = await registry.ListModels(model_registry_pb2.ListModelsRequest(), metadata=api_key("bob"))
    assert "e2e-model" in {m.id for m in listed.models}
    text = scrape(stack.gateway)
    assert metric(text, "lumiserve_gateway_requests_total", code="UNAUTHENTICATED") >= 2
    assert metric(text, "lumiserve_gateway_requests_total", code="PERMISSION_DENIED") >= 2


async def test_rate_limit_and_concurrency_cap(stack):
    async with grpc.aio.insecure_channel(stack.strict_gateway.address) as channel:
        stub = vl_grpc.VisionLanguageServiceStub(channel)
        first = stub.Chat(_chat(300), metadata=api_key("alice"))
        await first.read()  # admitted and streaming: alice's one concurrent slot is taken
        with pytest.raises(grpc.aio.AioRpcError) as busy:
            await stub.ListTaskPresets(
                vl_pb2.ListTaskPresetsRequest(model="tiny-llava"), metadata=api_key("alice")
            )
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "calls in flight" in busy.value.details()
        first.cancel()
        await asyncio.sleep(0.2)
        # burst 3: the Chat took one token (a call refused for concurrency takes none); two more pass
        for _ in range(2):
            await stub.ListTaskPresets(
                vl_pb2.ListTaskPresetsRequest(model="tiny-llava"), metadata=api_key("alice")
            )
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await stub.ListTaskPresets(
                vl_pb2.ListTaskPresetsRequest(model="tiny-llava"), metadata=api_key("alice")
            )
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        (retry,) = [d for d in status_details(limited.value) if isinstance(d, error_details_pb2.RetryInfo)]
        assert retry.retry_delay.seconds > 0
        # another tenant is not affected
        await stub.ListTaskPresets(vl_pb2.ListTaskPresetsRequest(model="tiny-llava"), metadata=api_key("bob"))
    text = scrape(stack.strict_gateway)
    assert (
        metric(text, "lumiserve_gateway_requests_total", code="RESOURCE_EXHAUSTED", tenant_class="standard")
        == 2
    )


async def test_killed_backend_ends_its_streams_unavailable_and_new_calls_go_elsewhere(stack, channel):
    stub = vl_grpc.VisionLanguageServiceStub(channel)
    calls = [stub.Chat(_chat(1500), metadata=api_key("alice")) for _ in range(2)]
    for call in calls:
        await call.read()  # one stream on each replica (least outstanding first)
    retries_before = metric(scrape(stack.gateway), "lumiserve_gateway_retries_total")
    stack.vlm[0].process.send_signal(signal.SIGKILL)
    # The registry lists the dead replica until its heartbeat TTL passes; with no call open there the
    # gateway tries it first, fails before any event, and retries on the survivor.
    for _ in range(2):
        events = [r async for r in stub.Chat(_chat(4), metadata=api_key("bob"))]
        assert events[-1].final and events[-1].completion.usage.completion_tokens == 4
    assert metric(scrape(stack.gateway), "lumiserve_gateway_retries_total") >= retries_before + 1
    outcomes = []
    for call in calls:  # the stream on the dead replica ended UNAVAILABLE; the other one completed
        try:
            while await call.read() != grpc.aio.EOF:
                pass
            outcomes.append(await call.code())
        except grpc.aio.AioRpcError as error:
            outcomes.append(error.code())
            assert "failed mid-stream" in error.details()
    assert sorted(c.name for c in outcomes) == ["OK", "UNAVAILABLE"]
