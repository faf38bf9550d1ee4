"""The same service code path serves SDXL: a tiny random-weight SDXL pipeline (two text encoders,
text-time conditioning) built here, loaded through from_pretrained by the service."""

from __future__ import annotations

import tempfile
from pathlib import Path

import grpc
import pytest
import torch
from test_diffusion_service import (
    decode,
    events,
    init_image,
    mask_image,
    request,
    settings_for,
    start_service,
    stop_service,
)

from lumiserve.diffusion.v1 import diffusion_pb2 as pb
from lumiserve.diffusion.v1 import diffusion_pb2_grpc
from lumiserve.testing.tiny_models import clip_text_config, make_tiny_clip_tokenizer, tiny_vae

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers"),
    pytest.mark.filterwarnings("ignore:Should have t:UserWarning:torchsde"),  # torchsde float rounding
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]


def build_tiny_sdxl(out_dir: Path) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_tiny_clip_tokenizer(Path(tmp))
    text_config = clip_text_config(tokenizer)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + the 32-d pooled text embedding
        cross_attention_dim=64,  # both encoders' hidden states side by side
    )
    vae = tiny_vae()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_config),
        text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
    ).save_pretrained(out_dir)


@pytest.fixture(scope="module")
async def xl_stub(tiny_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sdxl")
    build_tiny_sdxl(folder)
    host, plane, channel, _ = await start_service(
        settings_for(tiny_models, models=[f"xl={folder}"], controlnets=[], metrics_port=-1)
    )
    yield diffusion_pb2_grpc.DiffusionServiceStub(channel)
    await stop_service(host, plane, channel)


async def test_sdxl_txt2img_with_clip_skip_negative_prompt_and_previews(xl_stub):
    received = await events(
        xl_stub,
        request(
            model="xl",
            steps=2,
            clip_skip=2,
            negative_prompt="blurry",
            preview=pb.PreviewOptions(every_n_steps=1),
        ),
    )
    assert [len(e.progress.previews) for e in received if e.HasField("progress")] == [1, 1]
    res = received[-1].result
    assert decode(res.images[0].image.data).size == (64, 64) and "Clip skip: 2" in res.images[0].infotext


async def test_sdxl_img2img_and_inpainting(xl_stub):
    img2img = await events(xl_stub, request(model="xl", steps=2, strength=1.0, init_image=init_image()))
    assert img2img[-1].result.parameters.task == pb.TASK_IMAGE_TO_IMAGE
    inpaint = await events(
        xl_stub,
        request(
            model="xl",
            steps=4,
            init_image=init_image(),
            mask=pb.Mask(image=mask_image()),
            sampler="DPM++ 2M",
            sigma_schedule=pb.SIGMA_SCHEDULE_KARRAS,
        ),
    )
    assert inpaint[-1].result.parameters.task == pb.TASK_INPAINT


async def test_sdxl_models_and_samplers(xl_stub):
    (model,) = (await xl_stub.ListModels(pb.ListModelsRequest())).cache.models
    assert set(model.tasks) == {"txt2img", "img2img", "inpaint", "controlnet"}
    names = [s.name for s in (await xl_stub.ListSamplers(pb.ListSamplersRequest(model="xl"))).samplers]
    assert {"Euler", "Euler a", "DPM++ 2M", "UniPC"} <= set(names)
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await events(xl_stub, request(model="xl", clip_skip=9))
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
