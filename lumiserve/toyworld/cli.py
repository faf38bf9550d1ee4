"""``lumiserve toyworld ...``: train and evaluate the toy-world model pair.

Run as ``python -m lumiserve.toyworld.cli train diffusion`` until the top-level CLI mounts ``app``.
Importing this module is cheap: torch, diffusers and transformers are imported inside the commands.
"""

from __future__ import annotations

import json
import os
import sys
import time
from enum import StrEnum
from typing import Annotated

import typer

app = typer.Typer(help="Toy-world model pair: train and evaluate.", no_args_is_help=True)

DEFAULT_ROOT = "models"
SD_NAME = "toyworld-sd"
VLM_NAME = "toyworld-llava"
TRAIN_INFO = "train_info.json"
EXTRAS_SHARE = 0.3  # --extras: share of samples with a position phrase, and with a background phrase


class Which(StrEnum):
    """Which model(s) a command acts on."""

    diffusion = "diffusion"
    vlm = "vlm"
    all = "all"


def _folders(which: Which, out: str | None) -> dict[str, str]:
    """Output folder per model: ``--out`` is the model folder for one model, the parent folder for ``all``."""
    if which is Which.all:
        root = out or DEFAULT_ROOT
        return {"diffusion": os.path.join(root, SD_NAME), "vlm": os.path.join(root, VLM_NAME)}
    default = os.path.join(DEFAULT_ROOT, SD_NAME if which is Which.diffusion else VLM_NAME)
    return {which.value: out or default}


def _command_line(which: Which, out: str | None, steps: int | None, vae_steps: int | None, quick: bool,
                  seed: int, extras: bool = False) -> str:  # fmt: skip
    """The command that reproduces a training run (recorded in train_info.json and the model card)."""
    parts = ["python -m lumiserve.toyworld.cli train", which.value]
    if out is not None:
        parts.append(f"--out {out}")
    if quick:
        parts.append("--quick")
    if steps is not None:
        parts.append(f"--steps {steps}")
    if vae_steps is not None:
        parts.append(f"--vae-steps {vae_steps}")
    if extras:
        parts.append("--extras")
    parts.append(f"--seed {seed}")
    return " ".join(parts)


@app.command()
def train(
    which: Annotated[Which, typer.Argument(help="diffusion, vlm or all")],
    out: Annotated[str | None, typer.Option(help="output folder (parent folder for 'all')")] = None,
    steps: Annotated[int | None, typer.Option(help="main training steps (UNet+TE / VLM)")] = None,
    vae_steps: Annotated[int | None, typer.Option(help="VAE steps (diffusion)")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="a few steps on little data (CI)")] = False,
    seed: Annotated[int, typer.Option(help="seed of everything")] = 0,
    extras: Annotated[
        bool, typer.Option("--extras", help="stretch: also position / background phrases and questions")
    ] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Train from scratch (one CPU thread, deterministic) and save_pretrained (safetensors)."""
    for name, folder in _folders(which, out).items():
        t0 = time.perf_counter()
        if name == "diffusion":
            from lumiserve.toyworld import train_diffusion as td

            cfg = td.DiffusionTrainConfig.quick(seed) if quick else td.DiffusionTrainConfig(seed=seed)
            if steps is not None:
                cfg.unet_steps = steps
            if vae_steps is not None:
                cfg.vae_steps = vae_steps
            if extras:
                cfg.p_position, cfg.p_background = 0.5, EXTRAS_SHARE
                cfg.cross_attn_both_levels = True
                cfg.zero_snr = True
                if not quick and steps is None:
                    cfg.unet_steps = 6000
            res = td.train(folder, cfg, progress=progress)
            info = res.to_dict()
            first, last = res.losses["unet_eps"][:20], res.losses["unet_eps"][-20:]
        else:
            from lumiserve.toyworld import train_vlm as tv

            cfg_v = tv.VlmTrainConfig.quick(seed) if quick else tv.VlmTrainConfig(seed=seed)
            if steps is not None:
                cfg_v.steps = steps
            if extras:
                cfg_v.p_position = cfg_v.p_background = EXTRAS_SHARE
            res_v = tv.train(folder, cfg_v, progress=progress)
            info = res_v.to_dict()
            first, last = res_v.losses[:20], res_v.losses[-20:]
        info["command"] = _command_line(which, out, steps, vae_steps, quick, seed, extras)
        info["loss_first"] = sum(first) / len(first)
        info["loss_last"] = sum(last) / len(last)
        info["wall_seconds"] = time.perf_counter() - t0
        import torch

        info["versions"] = _versions(torch.__version__)
        with open(os.path.join(folder, TRAIN_INFO), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1)
        typer.echo(f"{name}: {folder} (loss {info['loss_first']:.4f} -> {info['loss_last']:.4f}, "
                   f"{info['wall_seconds']:.0f}s)")  # fmt: skip


def _versions(torch_version: str) -> dict[str, str]:
    import diffusers
    import transformers

    return {
        "torch": torch_version,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
    }


@app.command("eval")
def eval_(
    which: Annotated[Which, typer.Argument(help="diffusion, vlm or all (all adds the round trip)")],
    path: Annotated[str | None, typer.Option(help="model folder (parent folder for 'all')")] = None,
    seeds: Annotated[int, typer.Option(help="diffusion: seeds per prompt")] = 4,
    n: Annotated[int, typer.Option(help="VLM: fresh renders per question")] = 100,
    write_card: Annotated[bool, typer.Option("--write-card", help="write README.md model cards")] = False,
    extras: Annotated[
        bool, typer.Option("--extras", help="stretch: position / background accuracies")
    ] = False,
) -> None:
    """Reload saved folders with from_pretrained and measure their accuracies (one CPU thread)."""
    import torch

    from lumiserve.toyworld import evaluate as ev

    torch.set_num_threads(1)

    folders = _folders(which, path)
    metrics: dict[str, dict] = {}
    if "diffusion" in folders:
        metrics["diffusion"] = ev.evaluate_diffusion(folders["diffusion"], seeds=seeds)
        if extras:
            metrics["diffusion"]["extras"] = ev.evaluate_diffusion_extras(folders["diffusion"])
        typer.echo(f"diffusion {folders['diffusion']}: {json.dumps(metrics['diffusion'])}")
    if "vlm" in folders:
        metrics["vlm"] = ev.evaluate_vlm(folders["vlm"], n=n, extras=extras)
        typer.echo(f"vlm {folders['vlm']}: {json.dumps(metrics['vlm'])}")
    if which is Which.all:
        metrics["roundtrip"] = ev.evaluate_roundtrip(folders["diffusion"], folders["vlm"], seeds=seeds)
        typer.echo(f"round trip: {json.dumps(metrics['roundtrip'])}")
    flags = f" --seeds {seeds} --n {n}" + (" --extras" if extras else "")
    metrics["eval_command"] = f"python -m lumiserve.toyworld.cli eval {which.value}{flags}"  # type: ignore[assignment]
    if write_card:
        from lumiserve.toyworld import cards

        for name, folder in folders.items():
            cards.write_card(name, folder, metrics)
            typer.echo(f"wrote {os.path.join(folder, 'README.md')}")


if __name__ == "__main__":
    app()
