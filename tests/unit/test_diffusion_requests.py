"""Validation of diffusion requests, infotext and settings parsing (no model needed)."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from services.common.errors import InvalidArgument
from services.common.settings import SettingsError
from services.diffusion.infotext import infotext
from services.diffusion.requests import (
    ControlUnit,
    GenerationRequest,
    Limits,
    MaskSpec,
    validate,
    with_model_defaults,
    with_size,
)
from services.diffusion.settings import DiffusionSettings, ModelConfig

LIMITS = Limits(min_size=64, max_size=1024, max_steps=50, max_guidance=20, max_images=4)
RGB = Image.new("RGB", (100, 60))


def check(**fields) -> GenerationRequest:
    return validate(GenerationRequest(model="m", **fields), LIMITS)


def test_defaults_are_filled_and_task_derived():
    plain = check(prompt="x")
    assert (plain.task, plain.steps, plain.guidance_scale, plain.num_images, plain.seed) == (
        "txt2img",
        20,
        7.0,
        1,
        None,
    )
    assert check(init_image=RGB).task == "img2img"
    assert check(init_image=RGB).strength == 0.75
    assert check(init_image=RGB, mask=MaskSpec(Image.new("L", (100, 60)))).task == "inpaint"
    assert check(seed=-1).seed is None and check(seed=5).seed == 5


@pytest.mark.parametrize(
    "fields, field",
    [
        (dict(width=100), "width"),
        (dict(height=2048), "height"),
        (dict(steps=51), "steps"),
        (dict(guidance_scale=-1.0), "guidance_scale"),
        (dict(init_image=RGB, strength=-0.1), "strength"),
        (dict(sampler="Nope"), "sampler"),
        (dict(num_images=5), "num_images"),
        (dict(init_image=RGB, mask=MaskSpec(Image.new("L", (10, 10)))), "mask.image"),
        (dict(init_image=RGB, mask=MaskSpec(Image.new("L", (100, 60)), blur=999)), "mask.blur"),
        (
            dict(controlnet_units=(ControlUnit("c", RGB, scale=3.0),)),
            "controlnet_units[0].conditioning_scale",
        ),
        (dict(task="txt2img", init_image=RGB), "init_image"),
        (dict(prompt="x" * 9000), "prompt"),
    ],
)
def test_invalid_fields_are_named(fields, field):
    with pytest.raises(InvalidArgument) as excinfo:
        check(**fields)
    assert excinfo.value.field == field


def test_size_comes_from_the_init_image_rounded_down_or_the_model():
    assert (lambda r: (r.width, r.height))(with_size(check(init_image=RGB), 512, LIMITS)) == (96, 56)
    assert (lambda r: (r.width, r.height))(with_size(check(), 512, LIMITS)) == (512, 512)


def test_batch_key_groups_only_plain_txt2img_with_equal_settings():
    a, b = check(prompt="a", seed=1), check(prompt="b", seed=2, num_images=2)
    assert a.batch_key() == b.batch_key() is not None
    assert check(steps=3).batch_key() != a.batch_key()
    assert check(init_image=RGB).batch_key() is None


def test_infotext_is_a1111_style():
    request = with_size(check(prompt="a cat", negative_prompt="dog", seed=3, clip_skip=2), 64, LIMITS)
    text = infotext(request, 4, "DPM++ 2M")
    assert text.splitlines()[0] == "a cat"
    assert text.splitlines()[1] == "Negative prompt: dog"
    assert text.splitlines()[2].startswith(
        "Steps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 4, Size: 64x64, Model: m, Clip skip: 2"
    )


def test_settings_parse_model_pairs_and_yaml(tmp_path):
    settings = DiffusionSettings.load(["--models", "a=/x/a,/y/b", "--controlnets", "c=/z/c"], environ={})
    assert [(c.id, c.source) for c in settings.model_configs()] == [("a", "/x/a"), ("b", "/y/b")]
    assert [c.id for c in settings.controlnet_configs()] == ["c"]
    file = tmp_path / "models.yaml"
    file.write_text("models:\n  - {id: a, source: /other, dtype: fp16, vae_tiling: true, pin: true}\n")
    settings = DiffusionSettings.load(["--models", "a=/x/a", "--models-file", str(file)], environ={})
    (config,) = settings.model_configs()
    assert (config.source, config.dtype, config.vae_tiling, config.pin) == ("/other", "fp16", True, True)
    file.write_text("models:\n  - {id: a, source: /x, colour: blue}\n")
    with pytest.raises(SettingsError, match="colour"):
        DiffusionSettings.load(["--models-file", str(file)], environ={})
    with pytest.raises(SettingsError, match="duplicate"):
        DiffusionSettings.load(["--models", "a=/x,a=/y"], environ={})


def test_model_options_in_pairs_are_typed_and_checked():
    pair = "toy=/m;steps=25;guidance_scale=5;sampler=DPM++ 2M;dtype=fp16;vae_tiling=true"
    (config,) = DiffusionSettings.load(["--models", pair], environ={}).model_configs()
    assert (config.source, config.steps, config.guidance_scale, config.sampler) == ("/m", 25, 5.0, "DPM++ 2M")
    assert (config.dtype, config.vae_tiling) == ("fp16", True)
    for bad, message in [
        ("t=/m;steps=many", "model 't': steps='many': expected an integer"),
        ("t=/m;colour=blue", "key one of dtype"),
        ("t=/m;sampler=Fast", "sampler 'Fast' must be one of Euler"),
        ("t=/m;vae_tiling=maybe", "model 't': vae_tiling='maybe': expected true or false"),
        ("t=/m;steps=500", "steps=500 is above max_steps (--max-steps / LUMISERVE_MAX_STEPS), 150"),
    ]:
        with pytest.raises(SettingsError, match=re.escape(message)):
            DiffusionSettings.load(["--models", bad], environ={})


def test_model_defaults_fill_only_unset_fields():
    config = ModelConfig("m", "/m", steps=25, guidance_scale=5.0, sampler="DDIM")
    filled = with_model_defaults(GenerationRequest(model="m"), config)
    assert (filled.steps, filled.guidance_scale, filled.sampler) == (25, 5.0, "DDIM")
    asked = GenerationRequest(model="m", steps=4, guidance_scale=0.0, sampler="Euler")
    assert with_model_defaults(asked, config) == asked
    plain = validate(with_model_defaults(GenerationRequest(model="m"), ModelConfig("m", "/m")), Limits())
    assert (plain.steps, plain.guidance_scale, plain.sampler) == (20, 7.0, "")


def test_settings_help_renders():
    assert "--memory-budget-mb" in DiffusionSettings.argument_parser().format_help()
