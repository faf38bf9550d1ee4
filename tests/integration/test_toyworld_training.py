"""Quick mode of both toy-world trainers: the loss falls and the saved folders load with from_pretrained."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from lumiserve.toyworld import train_diffusion as td
from lumiserve.toyworld import train_vlm as tv
from lumiserve.toyworld.cli import app
from lumiserve.toyworld.world import RES


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _no_pickles(folder: Path) -> None:
    files = [p.name for p in folder.rglob("*") if p.is_file()]
    assert any(name.endswith(".safetensors") for name in files)
    assert not any(name.endswith((".bin", ".pt", ".pth", ".ckpt")) for name in files)


def test_diffusion_quick_training_learns_and_reloads(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    threads = torch.get_num_threads()
    res = td.train(str(tmp_path / "sd"), td.DiffusionTrainConfig.quick(), progress=False, log=lambda _: None)
    assert torch.get_num_threads() == threads  # restored after the one-thread run
    vae, eps = res.losses["vae_mse"], res.losses["unet_eps"]
    assert len(vae) == 25 and len(eps) == 30
    assert _mean(vae[-5:]) < 0.5 * _mean(vae[:5])
    assert _mean(eps[-10:]) < 0.8 * _mean(eps[:10])
    _no_pickles(tmp_path / "sd")

    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "sd"), use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert pipe.tokenizer("a red circle").input_ids == [
        pipe.tokenizer.bos_token_id,
        *(pipe.tokenizer.convert_tokens_to_ids(f"{w}</w>") for w in ("a", "red", "circle")),
        pipe.tokenizer.eos_token_id,
    ]  # every toy word is one token
    image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (RES, RES)


def test_diffusion_training_is_deterministic(tmp_path: Path) -> None:
    cfg = td.DiffusionTrainConfig(vae_steps=3, unet_steps=3, n_per_class=2, vae_batch=4, unet_batch=4)
    for name in ("a", "b"):
        td.train(str(tmp_path / name), cfg, progress=False, log=lambda _: None)
    for part in ("unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model", "text_encoder/model"):
        a = (tmp_path / "a" / f"{part}.safetensors").read_bytes()
        assert a == (tmp_path / "b" / f"{part}.safetensors").read_bytes(), part


def test_vlm_quick_training_learns_and_reloads(tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    res = tv.train(str(tmp_path / "vlm"), tv.VlmTrainConfig.quick(), progress=False, log=lambda _: None)
    assert len(res.losses) == 30
    assert _mean(res.losses[-5:]) < 0.7 * _mean(res.losses[:5])
    _no_pickles(tmp_path / "vlm")

    model = AutoModelForImageTextToText.from_pretrained(str(tmp_path / "vlm"), use_safetensors=True)
    proc = AutoProcessor.from_pretrained(str(tmp_path / "vlm"))
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(proc).__name__ == "LlavaProcessor"
    from lumiserve.toyworld.evaluate import ask
    from lumiserve.toyworld.world import render

    image, _ = render("red", "circle")
    (answer,) = ask(model, proc, [image], "What is in this image?")
    assert isinstance(answer, str)


def test_vlm_training_is_deterministic(tmp_path: Path) -> None:
    cfg = tv.VlmTrainConfig(steps=3, batch=4)
    for name in ("a", "b"):
        tv.train(str(tmp_path / name), cfg, progress=False, log=lambda _: None)
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_cli_quick_train_writes_folder_and_info(tmp_path: Path) -> None:
    out = tmp_path / "cli-vlm"
    result = CliRunner().invoke(
        app, ["train", "vlm", "--quick", "--steps", "12", "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    info = json.loads((out / "train_info.json").read_text())
    assert info["config"]["steps"] == 12 and info["config"]["seed"] == 0
    assert info["command"].startswith("python -m lumiserve.toyworld.cli train vlm")
    assert "--quick" in info["command"] and "--steps 12" in info["command"]
    assert (out / "model.safetensors").exists() and (out / "processor_config.json").exists()


def test_stretch_extras_train_and_reload(tmp_path: Path) -> None:
    """Opt-in position / background phrases: both trainers run with them and the folders reload."""
    from diffusers import UNet2DConditionModel
    from transformers import AutoProcessor

    cfg = td.DiffusionTrainConfig(vae_steps=3, unet_steps=3, n_per_class=4, vae_batch=4, unet_batch=4,
                                  p_position=0.5, p_background=0.3, cross_attn_both_levels=True)  # fmt: skip
    td.train(str(tmp_path / "sd"), cfg, progress=False, log=lambda _: None)
    unet = UNet2DConditionModel.from_pretrained(str(tmp_path / "sd"), subfolder="unet", use_safetensors=True)
    assert unet.config.down_block_types == ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]

    vcfg = tv.VlmTrainConfig(steps=4, batch=8, p_position=0.3, p_background=0.3)
    assert vcfg.kinds == ("caption", "colour", "shape", "position", "background")
    tv.train(str(tmp_path / "vlm"), vcfg, progress=False, log=lambda _: None)
    proc = AutoProcessor.from_pretrained(str(tmp_path / "vlm"))
    assert "left" in proc.tokenizer.decode(proc.tokenizer("on the left")["input_ids"])
