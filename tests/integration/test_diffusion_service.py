"""The diffusion service end to end on a real gRPC server (127.0.0.1, ephemeral ports), tiny models.

Covers every task, determinism, samplers, previews, validation, models and metrics. Queueing,
cancellation and faults are in test_diffusion_scheduling.py.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import random
import urllib.request

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from lumiserve.common.v1 import common_pb2
from lumiserve.diffusion.v1 import diffusion_pb2 as pb
from lumiserve.diffusion.v1 import diffusion_pb2_grpc
from services.common import errors
from services.common.registration import LoadReport
from services.diffusion.main import build
from services.diffusion.settings import DiffusionSettings

# numpy 2 deprecations raised inside diffusers' schedulers: not ours to fix
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers"),
    pytest.mark.filterwarnings("ignore:Should have t:UserWarning:torchsde"),  # torchsde float rounding
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]

SIZE = 64


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def max_pixel_diff(a: bytes, b: bytes) -> int:
    x = np.asarray(decode(a).convert("RGB"), dtype=np.int16)
    y = np.asarray(decode(b).convert("RGB"), dtype=np.int16)
    assert x.shape == y.shape
    return int(np.abs(x - y).max())


def init_image(size=(SIZE, SIZE), colour=(200, 30, 30)) -> common_pb2.Image:
    return common_pb2.Image(data=png(Image.new("RGB", size, colour)))


def mask_image(size=(SIZE, SIZE)) -> common_pb2.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4))
    return common_pb2.Image(data=png(mask))


def settings_for(tiny_models, **overrides) -> DiffusionSettings:
    values = dict(
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        models=[f"tiny={tiny_models.sd}", f"inpaint={tiny_models.sd_inpaint}"],
        controlnets=[f"edges={tiny_models.controlnet}"],
        device="cpu",
        num_threads=1,
        min_size=32,
        max_steps=1000,
        max_pixels=512 * 512,
        drain_grace_seconds=1,
        pin_cpus=False,  # the service runs inside pytest: never pin the test process
    )
    values.update(overrides)
    settings = DiffusionSettings(**values)
    settings.validate()
    return settings


async def start_service(settings: DiffusionSettings):
    """What main() does, in-process: listen, load while NOT_SERVING, then serve."""
    host, plane = build(settings)
    await host.start()
    channel = grpc.aio.insecure_channel(host.address)
    loading = asyncio.create_task(plane.start())
    health = health_pb2_grpc.HealthStub(channel)
    status_while_loading = (await health.Check(health_pb2.HealthCheckRequest())).status
    await loading
    await host.set_serving(True)
    return host, plane, channel, status_while_loading


async def stop_service(host, plane, channel) -> None:
    """What main() does on SIGTERM, without the grace period: close, drain, stop the data plane."""
    await channel.close()
    await host.drain(grace=0)
    await plane.stop()


@pytest.fixture(scope="module")
async def service(tiny_models):
    host, plane, channel, status_while_loading = await start_service(settings_for(tiny_models))
    host.status_while_loading = status_while_loading
    yield host, plane, diffusion_pb2_grpc.DiffusionServiceStub(channel)
    await stop_service(host, plane, channel)


@pytest.fixture
def stub(service):
    return service[2]


def request(**fields) -> pb.GenerateRequest:
    values = dict(model="tiny", prompt="a red circle", width=SIZE, height=SIZE, steps=3, seed=7)
    values.update(fields)
    return pb.GenerateRequest(**values)


async def events(stub, req, metadata=(), timeout=None) -> list[pb.GenerateResponse]:
    return [e async for e in stub.Generate(req, metadata=metadata, timeout=timeout)]


async def result(stub, req) -> pb.Result:
    received = await events(stub, req)
    assert received[-1].final and received[-1].HasField("result")
    return received[-1].result


async def expect_error(stub, req) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await events(stub, req)
    return excinfo.value


# ---------------------------------------------------------------- lifecycle


async def test_health_not_serving_while_loading_then_serving(service):
    host, _, _ = service
    assert host.status_while_loading == health_pb2.HealthCheckResponse.NOT_SERVING
    async with grpc.aio.insecure_channel(host.address) as channel:
        status = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="lumiserve.diffusion.v1.DiffusionService")
        )
    assert status.status == health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------- tasks


async def test_txt2img_streams_queued_started_progress_then_result(stub):
    received = await events(stub, request(steps=4))
    kinds = [e.WhichOneof("event") for e in received]
    assert kinds == ["queued", "started", "progress", "progress", "progress", "progress", "result"]
    assert received[0].queued.position == 0
    assert received[1].started.total_steps == 4 and received[1].started.device == "cpu"
    assert [e.progress.step for e in received[2:6]] == [1, 2, 3, 4]
    assert all(e.progress.total_steps == 4 and e.progress.iterations_per_second > 0 for e in received[2:6])
    assert received[5].progress.eta_seconds == 0
    assert [e.final for e in received] == [False] * 6 + [True]
    assert len({e.job_id for e in received}) == 1
    res = received[-1].result
    (generated,) = res.images
    assert generated.image.media_type == "image/png" and (generated.image.width, generated.image.height) == (
        64,
        64,
    )
    image = decode(generated.image.data)
    assert image.size == (64, 64)
    assert image.text["parameters"] == generated.infotext
    assert generated.infotext.startswith("a red circle\n")
    assert "Steps: 4, Sampler: Euler, CFG scale: 7, Seed: 7, Size: 64x64, Model: tiny" in generated.infotext
    params = res.parameters
    assert (params.model, params.task, params.steps, params.seed, params.sampler) == (
        "tiny",
        pb.TASK_TEXT_TO_IMAGE,
        4,
        7,
        "Euler",
    )
    assert res.timing.total_seconds >= res.timing.time_to_first_event_seconds > 0


async def test_request_without_a_model_uses_the_default_model(stub):
    result = (await events(stub, request(model="")))[-1].result
    assert result.parameters.model == "tiny"
    assert len(result.images) == 1


async def test_a_models_own_defaults_fill_what_the_request_leaves_unset(tiny_models):
    carded = f"carded={tiny_models.sd};steps=3;guidance_scale=2.5;sampler=DDIM"
    settings = settings_for(tiny_models, models=[carded], controlnets=[], engine="thread")
    host, plane, channel, _ = await start_service(settings)
    try:
        stub = diffusion_pb2_grpc.DiffusionServiceStub(channel)
        defaults = await result(stub, request(model="", steps=0))
        used = defaults.parameters
        assert (used.model, used.steps, used.guidance_scale, used.sampler) == ("carded", 3, 2.5, "DDIM")
        assert "Steps: 3, Sampler: DDIM, CFG scale: 2.5," in defaults.images[0].infotext
        asked = request(model="carded", steps=2, guidance_scale=6, sampler="Euler")
        used = (await result(stub, asked)).parameters
        assert (used.steps, used.guidance_scale, used.sampler) == (2, 6, "Euler")
    finally:
        await stop_service(host, plane, channel)


async def test_img2img_uses_strength_and_the_init_image_size(stub):
    received = await events(
        stub, request(width=0, height=0, steps=4, strength=0.5, init_image=init_image((48, 40)))
    )
    started = next(e.started for e in received if e.HasField("started"))
    assert started.total_steps == 2  # 4 steps x strength 0.5
    res = received[-1].result
    assert res.parameters.task == pb.TASK_IMAGE_TO_IMAGE and res.parameters.strength == pytest.approx(0.5)
    assert decode(res.images[0].image.data).size == (48, 40)
    assert "Denoising strength: 0.5" in res.images[0].infotext


async def test_img2img_strength_changes_the_image(stub):
    low = await result(stub, request(strength=0.3, steps=10, init_image=init_image()))
    high = await result(stub, request(strength=1.0, steps=10, init_image=init_image()))
    assert low.images[0].image.data != high.images[0].image.data


@pytest.mark.parametrize(
    "model, mask",
    [
        ("tiny", pb.Mask(blur=4)),
        ("tiny", pb.Mask(invert=True, fill=pb.MASK_FILL_FILL)),
        ("inpaint", pb.Mask(fill=pb.MASK_FILL_LATENT_NOISE)),
        ("inpaint", pb.Mask(blur=2, fill=pb.MASK_FILL_LATENT_NOTHING)),
    ],
)
async def test_inpainting_with_mask_options(stub, model, mask):
    mask.image.CopyFrom(mask_image())
    res = await result(stub, request(model=model, init_image=init_image(), mask=mask, strength=0.9))
    assert res.parameters.task == pb.TASK_INPAINT
    assert decode(res.images[0].image.data).size == (SIZE, SIZE)
    assert f"Mask blur: {mask.blur}" in res.images[0].infotext


async def test_text_to_image_model_cannot_serve_plain_txt2img_with_9_channel_unet(stub):
    error = await expect_error(stub, request(model="inpaint"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "inpaint" in error.details()


async def test_controlnet_units(stub):
    edges = common_pb2.Image(data=png(Image.new("RGB", (SIZE, SIZE), (255, 255, 255))))
    one = pb.ControlNetUnit(model="edges", image=edges, conditioning_scale=0.8)
    two = pb.ControlNetUnit(model="edges", image=edges, guidance_start=0.2, guidance_end=0.7)
    plain = await result(stub, request())
    single = await result(stub, request(controlnet_units=[one]))
    both = await result(stub, request(controlnet_units=[one, two], init_image=init_image(), strength=0.8))
    assert single.images[0].image.data != plain.images[0].image.data
    assert [u.model for u in both.parameters.controlnet_units] == ["edges", "edges"]
    assert both.parameters.controlnet_units[1].guidance_end == pytest.approx(0.7)
    assert (
        'ControlNet 1: "Model: edges, Weight: 1, Guidance Start: 0.2, Guidance End: 0.7"'
        in both.images[0].infotext
    )
    mask = pb.Mask(image=mask_image())
    inpainted = await result(stub, request(controlnet_units=[one], init_image=init_image(), mask=mask))
    assert inpainted.parameters.task == pb.TASK_INPAINT


async def test_negative_prompt_guidance_and_clip_skip_change_the_image(stub):
    base = (await result(stub, request())).images[0].image.data
    assert (await result(stub, request(negative_prompt="blurry"))).images[0].image.data != base
    assert (await result(stub, request(guidance_scale=2.0))).images[0].image.data != base
    skipped = await result(stub, request(clip_skip=2))
    assert skipped.images[0].image.data != base and "Clip skip: 2" in skipped.images[0].infotext


async def test_output_formats(stub):
    jpeg = await result(stub, request(output_format=common_pb2.IMAGE_FORMAT_JPEG, output_quality=50))
    webp = await result(stub, request(output_format=common_pb2.IMAGE_FORMAT_WEBP))
    assert (
        jpeg.images[0].image.media_type == "image/jpeg" and decode(jpeg.images[0].image.data).format == "JPEG"
    )
    assert (
        webp.images[0].image.media_type == "image/webp" and decode(webp.images[0].image.data).format == "WEBP"
    )


def png_speed_class(data: bytes) -> int:
    """zlib's FLEVEL of a PNG's image data: 0 fastest (levels 0-1), 1 fast, 2 default (6), 3 best."""
    idat = data.index(b"IDAT")
    return data[idat + 5] >> 6  # after the chunk type: the zlib header's CMF, then FLG


async def test_png_compression_level_is_a_setting(stub, tiny_models):
    assert png_speed_class((await result(stub, request())).images[0].image.data) == 2  # zlib's default
    settings = settings_for(tiny_models, controlnets=[], engine="thread", png_compress_level=1)
    host, plane, channel, _ = await start_service(settings)
    try:
        fast = diffusion_pb2_grpc.DiffusionServiceStub(channel)
        png_previews = pb.PreviewOptions(every_n_steps=1, format=common_pb2.IMAGE_FORMAT_PNG)
        received = await events(fast, request(preview=png_previews))
        preview = next(e.progress.previews[0] for e in received if e.HasField("progress"))
        image = received[-1].result.images[0].image
        assert png_speed_class(image.data) == png_speed_class(preview.data) == 0
        assert decode(image.data).format == "PNG"
    finally:
        await stop_service(host, plane, channel)


# ---------------------------------------------------------------- seeds


async def test_same_seed_same_image_and_batch_images_reproduce_alone(stub):
    first = await result(stub, request(seed=1234, num_images=3))
    again = await result(stub, request(seed=1234, num_images=3))
    assert [i.image.data for i in first.images] == [i.image.data for i in again.images]
    assert [i.seed for i in first.images] == [1234, 1235, 1236]
    assert len({i.image.data for i in first.images}) == 3
    alone = await result(stub, request(seed=1236))
    assert max_pixel_diff(alone.images[0].image.data, first.images[2].image.data) <= 1


async def test_random_seed_is_returned_and_reproduces(stub):
    picked = await result(stub, request(seed=-1))
    unset = await result(stub, pb.GenerateRequest(model="tiny", prompt="x", width=SIZE, height=SIZE, steps=2))
    seed = picked.parameters.seed
    assert seed >= 0 and picked.images[0].seed == seed and unset.parameters.seed >= 0
    again = await result(stub, request(seed=seed))
    assert again.images[0].image.data == picked.images[0].image.data


# ---------------------------------------------------------------- samplers


async def test_every_listed_sampler_runs(stub):
    samplers = (await stub.ListSamplers(pb.ListSamplersRequest(model="tiny"))).samplers
    names = [s.name for s in samplers]
    expected = ["Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "DDIM", "UniPC", "Heun", "DPM2", "DPM2 a"]
    expected += ["PNDM", "DEIS", "LCM", "TCD"]
    expected += ["LMS"] if importlib.util.find_spec("scipy") else []  # optional packages of diffusers
    expected += ["DPM++ SDE"] if importlib.util.find_spec("torchsde") else []
    assert set(expected) <= set(names), set(expected) - set(names)
    for sampler in samplers:
        res = await result(stub, request(width=32, height=32, steps=4, sampler=sampler.name))
        assert res.parameters.sampler == sampler.name
        assert f"Sampler: {sampler.name}," in res.images[0].infotext
    karras = [s for s in samplers if pb.SIGMA_SCHEDULE_KARRAS in s.sigma_schedules]
    assert {"DPM++ 2M", "Euler"} <= {s.name for s in karras}
    for sampler in karras[:3]:
        res = await result(
            stub,
            request(
                width=32, height=32, steps=3, sampler=sampler.name, sigma_schedule=pb.SIGMA_SCHEDULE_KARRAS
            ),
        )
        assert "Schedule type: Karras" in res.images[0].infotext


async def test_samplers_give_different_images(stub):
    euler = await result(stub, request(sampler="Euler"))
    ancestral = await result(stub, request(sampler="Euler a"))
    assert euler.images[0].image.data != ancestral.images[0].image.data


async def test_list_samplers_of_the_default_model_and_unknown_model(stub):
    default = await stub.ListSamplers(pb.ListSamplersRequest())
    assert "Euler" in [s.name for s in default.samplers]
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await stub.ListSamplers(pb.ListSamplersRequest(model="nope"))
    assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------- previews


async def test_previews_arrive_at_the_requested_cadence(stub):
    received = await events(stub, request(steps=5, num_images=2, preview=pb.PreviewOptions(every_n_steps=2)))
    progress = [e.progress for e in received if e.HasField("progress")]
    assert [p.step for p in progress] == [1, 2, 3, 4, 5]
    assert [len(p.previews) for p in progress] == [0, 2, 0, 2, 0]
    preview = progress[1].previews[0]
    assert preview.media_type == "image/jpeg"
    assert decode(preview.data).size == (SIZE, SIZE)


async def test_full_vae_previews_every_step(stub):
    options = pb.PreviewOptions(
        every_n_steps=1, method=pb.PREVIEW_METHOD_FULL, format=common_pb2.IMAGE_FORMAT_PNG
    )
    received = await events(stub, request(steps=3, preview=options))
    progress = [e.progress for e in received if e.HasField("progress")]
    assert [len(p.previews) for p in progress] == [1, 1, 1]
    # the last full-decode preview is the final image
    assert max_pixel_diff(progress[-1].previews[0].data, received[-1].result.images[0].image.data) <= 1


# ---------------------------------------------------------------- validation

BAD_IMAGE = common_pb2.Image(data=b"not an image at all")


@pytest.mark.parametrize(
    "fields, field, fragment",
    [
        (dict(width=65), "width", "multiple of 8"),
        (dict(height=4096), "height", "[32, 2048]"),
        (dict(width=16), "width", "[32, 2048]"),
        (dict(steps=5000), "steps", "[1, 1000]"),
        (dict(guidance_scale=99.0), "guidance_scale", "[0, 30]"),
        (dict(init_image=init_image(), strength=1.5), "strength", "[0, 1]"),
        (dict(strength=0.5), "strength", "init image"),
        (dict(init_image=init_image(), mask=pb.Mask(image=mask_image((32, 32)))), "mask.image", "must match"),
        (dict(init_image=BAD_IMAGE), "init_image", "not a decodable"),
        (dict(init_image=init_image((1024, 1024))), "init_image", "limit is 262144"),
        (dict(sampler="Euler b"), "sampler", "valid: Euler, Euler a"),
        (dict(sampler="PNDM", steps=2), "steps", "at least 4 steps"),
        (dict(sampler="Euler a", sigma_schedule=pb.SIGMA_SCHEDULE_KARRAS), "sigma_schedule", "not supported"),
        (dict(num_images=99), "num_images", "[1, 8]"),
        (dict(clip_skip=13), "clip_skip", "[0, 12]"),
        (dict(clip_skip=9), "clip_skip", "[0, 5]"),
        (dict(job_id="bad id with spaces"), "job_id", "1-64 characters"),
        (dict(seed=-5), "seed", "out of range"),
        (dict(task=pb.TASK_IMAGE_TO_IMAGE), "init_image", "required"),
        (dict(task=pb.TASK_INPAINT, init_image=init_image()), "mask.image", "required"),
        (
            dict(
                controlnet_units=[
                    pb.ControlNetUnit(model="edges", image=init_image(), guidance_start=0.8, guidance_end=0.2)
                ]
            ),
            "controlnet_units[0].guidance_end",
            "greater than guidance_start",
        ),
        (
            dict(controlnet_units=[pb.ControlNetUnit(model="edges", image=BAD_IMAGE)]),
            "controlnet_units[0].image",
            "decodable",
        ),
    ],
)
async def test_invalid_requests_name_the_field(stub, fields, field, fragment):
    error = await expect_error(stub, request(**fields))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert fragment in error.details()
    (bad_request,) = errors.status_details(error)
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert bad_request.field_violations[0].field == field


async def test_unknown_models_are_not_found(stub):
    assert (await expect_error(stub, request(model="nope"))).code() == grpc.StatusCode.NOT_FOUND
    unit = pb.ControlNetUnit(model="nope", image=init_image())
    error = await expect_error(stub, request(controlnet_units=[unit]))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "controlnet_units[0].model" in error.details()


# ---------------------------------------------------------------- models


async def test_list_load_and_unload_models(stub, tiny_models):
    listed = (await stub.ListModels(pb.ListModelsRequest())).cache
    by_id = {m.model: m for m in listed.models}
    assert by_id["tiny"].state == common_pb2.MODEL_STATE_READY
    assert set(by_id["tiny"].tasks) == {"txt2img", "img2img", "inpaint", "controlnet"}
    assert set(by_id["inpaint"].tasks) == {"inpaint", "controlnet"}
    assert by_id["tiny"].precision == common_pb2.PRECISION_FP32 and by_id["tiny"].memory_bytes > 1_000_000
    assert listed.memory_used_bytes >= by_id["tiny"].memory_bytes + by_id["inpaint"].memory_bytes

    spec = common_pb2.ModelLoadSpec(
        model="tiny-bf16", source=str(tiny_models.sd), precision=common_pb2.PRECISION_BF16
    )
    loaded = (await stub.LoadModel(pb.LoadModelRequest(spec=spec))).model
    assert loaded.state == common_pb2.MODEL_STATE_READY and loaded.precision == common_pb2.PRECISION_BF16
    assert loaded.memory_bytes < by_id["tiny"].memory_bytes
    res = await result(stub, request(model="tiny-bf16", width=32, height=32, steps=2))
    assert res.parameters.model == "tiny-bf16"

    await stub.UnloadModel(pb.UnloadModelRequest(model="tiny-bf16"))
    ids = {m.model for m in (await stub.ListModels(pb.ListModelsRequest())).cache.models}
    assert "tiny-bf16" not in ids
    # still in the catalog: a request loads it again on demand
    assert (await result(stub, request(model="tiny-bf16", width=32, height=32, steps=2))).images
    await stub.UnloadModel(pb.UnloadModelRequest(model="tiny-bf16"))


async def test_load_model_errors(stub, tmp_path):
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.LoadModel(pb.LoadModelRequest(spec=common_pb2.ModelLoadSpec(model="nope")))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    spec = common_pb2.ModelLoadSpec(model="missing", source=str(tmp_path / "missing"))
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.LoadModel(pb.LoadModelRequest(spec=spec))
    assert missing.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    failed = {m.model: m for m in (await stub.ListModels(pb.ListModelsRequest())).cache.models}["missing"]
    assert failed.state == common_pb2.MODEL_STATE_FAILED and failed.error
    with pytest.raises(grpc.aio.AioRpcError) as unload:
        await stub.UnloadModel(pb.UnloadModelRequest(model="never-heard-of"))
    assert unload.value.code() == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------- metrics


async def test_metrics(service):
    host, plane, stub = service
    await result(stub, request(steps=2))
    url = f"http://127.0.0.1:{host.metrics_port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    labels = 'family="diffusion",model="tiny"'
    assert f"lumiserve_queue_depth{{{labels}}} 0.0" in text
    assert f'lumiserve_generation_requests_total{{{labels},status="ok"}}' in text
    assert f"lumiserve_queue_time_seconds_count{{{labels}}}" in text
    assert f"lumiserve_time_to_first_event_seconds_count{{{labels}}}" in text
    assert f"lumiserve_denoising_steps_total{{{labels}}}" in text
    assert f"lumiserve_denoising_steps_per_second_count{{{labels}}}" in text
    assert f"lumiserve_model_load_seconds_count{{{labels}}} 1.0" in text
    assert 'lumiserve_models_loaded{family="diffusion"}' in text
    registry = host.metrics_registry
    assert registry.get_sample_value("lumiserve_models_loading", {"family": "diffusion"}) == 0
    snapshot = plane.load_snapshot()
    assert snapshot["queue_depth"]["tiny"] == 0 and snapshot["in_flight"] == 0
    assert "tiny" in snapshot["loaded_models"]
    report = LoadReport(
        queue_depth=sum(snapshot["queue_depth"].values()),
        in_flight=snapshot["in_flight"],
        memory_used_bytes=snapshot["memory_used_bytes"],
        queue_depth_by_model=snapshot["queue_depth"],
    )
    assert report.to_pb().memory_used_bytes > 0


async def test_malformed_requests_never_answer_internal(stub):
    """Random mixes of bad and odd values: every answer is a precise status or a result."""
    rng = random.Random(1234)
    choices = {
        "model": ["tiny", "nope", "inpaint", ""],
        "width": [0, 7, 32, 65, 4096, 2**31],
        "height": [0, 32, 100, 99999],
        "steps": [1, 2, 5000],
        "guidance_scale": [float("nan"), -1.0, 0.0, 1e9, 3.0],
        "strength": [float("nan"), -0.5, 0.0, 0.5, 7.0],
        "seed": [-(2**63), -1, 0, 2**63 - 1],
        "num_images": [1, 2, 10**6],
        "clip_skip": [0, 1, 2, 99],
        "sampler": ["", "Euler a", "DPM++ 2M", "💥", "x" * 1000],
        "sigma_schedule": [0, 1, 2, 3, 42],
        "task": [0, 1, 2, 3, 77],
        "output_format": [0, 1, 2, 3, 9],
        "priority": [0, 3, 1000],
        "output_quality": [0, 50, 101, 2**31],
        "prompt": ["", "a cat", "\x00\n\t", "p" * 10000],
        "job_id": ["", "ok-id", "../../etc", "x" * 100],
    }
    images = [None, BAD_IMAGE, common_pb2.Image(), init_image((32, 32)), init_image((40, 24))]
    allowed = {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
    }
    seen = set()
    for i in range(80):
        fields = {name: rng.choice(values) for name, values in choices.items() if rng.random() < 0.1}
        if fields.get("job_id") == "ok-id":
            fields["job_id"] = f"ok-{i}"
        req = request(**{"width": 32, "height": 32, "steps": 2, **fields})
        image = rng.choice(images) if rng.random() < 0.3 else None
        if image is not None:
            req.init_image.CopyFrom(image)
        if rng.random() < 0.15:
            req.mask.CopyFrom(
                pb.Mask(
                    image=rng.choice(images[1:]), blur=rng.choice([0, 3, 10**6]), fill=rng.choice([0, 4, 9])
                )
            )
        if rng.random() < 0.15:
            req.controlnet_units.add(
                model=rng.choice(["edges", "", "nope"]),
                image=rng.choice(images[1:]),
                conditioning_scale=rng.choice([0.5, float("inf"), -1.0]),
            )
        try:
            await events(stub, req)
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            code = error.code()
            assert code in allowed, (fields, error.details())
            assert error.details()
        seen.add(code)
    assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT} <= seen, seen
