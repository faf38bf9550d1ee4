"""Train the toy-world text-to-image model: a real SD-1.x ``StableDiffusionPipeline`` from scratch on CPU.

Stage 1 trains the ``AutoencoderKL`` on reconstruction (+ a tiny KL term); stage 2 trains the
``UNet2DConditionModel`` and the ``CLIPTextModel`` together with the epsilon (noise-prediction) loss,
10 % empty prompts for classifier-free guidance and an EMA of the weights, which is what gets saved.
Deterministic: fixed seeds, one CPU thread.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from lumiserve.toyworld.progress import make_progress, ticker
from lumiserve.toyworld.world import RES, make_dataset, write_clip_vocab

MAX_LEN = 16  # tokenizer.model_max_length == text encoder max_position_embeddings


@dataclass
class DiffusionTrainConfig:
    """Hyper-parameters of a diffusion training run (defaults = the committed model)."""

    seed: int = 0
    vae_steps: int = 1000
    unet_steps: int = 4000
    n_per_class: int = 600
    vae_batch: int = 32
    unet_batch: int = 64
    vae_lr: float = 1e-3
    unet_lr: float = 1e-3
    kl_weight: float = 1e-5
    p_uncond: float = 0.1
    ema_decay: float = 0.999
    p_position: float = 0.0  # stretch: share of prompts with a position phrase ("on the left")
    p_background: float = 0.0  # stretch: share of prompts with a background phrase ("on a gray background")
    cross_attn_both_levels: bool = False  # stretch: cross-attention at the 8x8 level too (for positions)
    zero_snr: bool = False  # stretch: zero terminal SNR + v-prediction (layout from the text, not the noise)

    @classmethod
    def quick(cls, seed: int = 0) -> DiffusionTrainConfig:
        """A few steps on a small data set, for CI: the loss falls, the folder loads."""
        return cls(seed=seed, vae_steps=25, unet_steps=30, n_per_class=8, vae_batch=16, unet_batch=16)


@dataclass
class DiffusionTrainResult:
    """What a run produced: the folder, per-stage losses and timings, parameter counts."""

    out: str
    config: DiffusionTrainConfig
    losses: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    notes: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-friendly summary (without the per-step losses)."""
        return {"out": self.out, "config": asdict(self.config), "seconds": self.seconds,
                "params": self.params, "notes": self.notes}  # fmt: skip


def make_tokenizer() -> CLIPTokenizer:
    """Byte-level CLIP BPE tokenizer in which every toy-world word is a single token."""
    with tempfile.TemporaryDirectory() as td:
        write_clip_vocab(td)
        return CLIPTokenizer.from_pretrained(td, model_max_length=MAX_LEN)


def build_vae() -> AutoencoderKL:
    """3-block VAE, 4x down-sampling: 32x32x3 image -> 8x8x4 latent."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(16, 32, 32), norm_num_groups=8, sample_size=RES,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    )  # fmt: skip


def build_text_encoder(tok: CLIPTokenizer) -> CLIPTextModel:
    """2-layer CLIP text transformer, hidden 64."""
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_LEN, projection_dim=64,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    ))  # fmt: skip


def build_unet(cross_attn_both_levels: bool = False) -> UNet2DConditionModel:
    """UNet (32, 64) on 8x8 latents, cross-attention at the lower level and the mid block (and at the
    upper level too with ``cross_attn_both_levels``)."""
    first = "CrossAttnDownBlock2D" if cross_attn_both_levels else "DownBlock2D"
    last = "CrossAttnUpBlock2D" if cross_attn_both_levels else "UpBlock2D"
    return UNet2DConditionModel(
        sample_size=RES // 4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), cross_attention_dim=64, attention_head_dim=4, norm_num_groups=8,
        down_block_types=(first, "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", last),
    )  # fmt: skip


def scheduler_kwargs(zero_snr: bool = False) -> dict:
    """SD-1.x noise schedule, shared by the training (DDPM) and sampling (DPM++) schedulers.

    ``zero_snr``: betas rescaled to zero terminal SNR, v-prediction, trailing timesteps (Lin et al. 2023),
    so that the last noise level holds no trace of the image and the layout must come from the prompt."""
    kw = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
          "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "steps_offset": 1}  # fmt: skip
    if zero_snr:
        kw.update(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return kw


def nparams(module: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in module.parameters())


def lr_at(step: int, total: int, base: float, warm: int) -> float:
    """Linear warm-up then cosine decay."""
    warm = max(1, min(warm, total // 10))
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(x).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def train_vae(X: np.ndarray, cfg: DiffusionTrainConfig, tick: Callable[[float], None]) -> tuple:
    """Stage 1: reconstruction + KL. Returns (vae, per-step reconstruction MSE)."""
    torch.manual_seed(cfg.seed + 1)
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed + 2)
    losses: list[float] = []
    for step in range(cfg.vae_steps):
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, cfg.vae_steps, cfg.vae_lr, warm=100)
        idx = torch.randint(0, len(X), (cfg.vae_batch,), generator=g)
        x = to_tensor(X[idx.numpy()])
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        mse = F.mse_loss(vae.decode(z).sample, x)
        kl = 0.5 * (post.mean**2 + post.var - 1.0 - post.logvar).mean()
        loss = mse + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(mse.item())
        tick(losses[-1])
    return vae.eval(), losses


@torch.no_grad()
def encode_all(vae: AutoencoderKL, X: np.ndarray, bs: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and standard deviations of every image."""
    mus, stds = [], []
    for i in range(0, len(X), bs):
        post = vae.encode(to_tensor(X[i : i + bs])).latent_dist
        mus.append(post.mean)
        stds.append(post.std)
    return torch.cat(mus), torch.cat(stds)


def train_unet(
    mu: torch.Tensor,
    sd: torch.Tensor,
    prompts: list[str],
    tok: CLIPTokenizer,
    cfg: DiffusionTrainConfig,
    tick: Callable[[float], None],
) -> tuple:
    """Stage 2: UNet + text encoder, epsilon loss, CFG dropout, EMA. Returns (ema_unet, ema_te, losses)."""
    torch.manual_seed(cfg.seed + 3)
    te = build_text_encoder(tok)
    unet = build_unet(cfg.cross_attn_both_levels)
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    ema_te = copy.deepcopy(te).requires_grad_(False)
    sched = DDPMScheduler(**scheduler_kwargs(cfg.zero_snr))
    params = list(unet.parameters()) + list(te.parameters())
    ema_params = list(ema_unet.parameters()) + list(ema_te.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    uniq = [*sorted(set(prompts)), ""]  # token ids per prompt, padded exactly as the pipeline does
    ids_tab = tok(uniq, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids  # fmt: skip
    pidx = torch.tensor([uniq.index(p) for p in prompts])
    empty = len(uniq) - 1
    g = torch.Generator().manual_seed(cfg.seed + 4)
    losses: list[float] = []
    bs = cfg.unet_batch
    for step in range(cfg.unet_steps):
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, cfg.unet_steps, cfg.unet_lr, warm=200)
        idx = torch.randint(0, len(mu), (bs,), generator=g)
        z0 = mu[idx] + sd[idx] * torch.randn(mu[idx].shape, generator=g)
        p = pidx[idx].clone()
        p[torch.rand(bs, generator=g) < cfg.p_uncond] = empty
        emb = te(ids_tab[p])[0]
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (bs,), generator=g)
        pred = unet(sched.add_noise(z0, noise, t), t, encoder_hidden_states=emb).sample
        loss = F.mse_loss(pred, sched.get_velocity(z0, noise, t) if cfg.zero_snr else noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            d = min(cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, params, 1 - d)
        losses.append(loss.item())
        tick(losses[-1])
    return ema_unet.eval(), ema_te.eval(), losses


def train(
    out: str,
    cfg: DiffusionTrainConfig | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> DiffusionTrainResult:
    """Train the whole pipeline and ``save_pretrained`` it (safetensors) into ``out``."""
    cfg = cfg or DiffusionTrainConfig()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(out, cfg, progress, log)
    finally:
        torch.set_num_threads(threads)


def _train(out: str, cfg: DiffusionTrainConfig, progress: bool, log: Callable[[str], None]):
    res = DiffusionTrainResult(out=out, config=cfg)
    tok = make_tokenizer()
    X, scenes = make_dataset(cfg.n_per_class, seed=cfg.seed, p_position=cfg.p_position,
                             p_background=cfg.p_background)  # fmt: skip
    prompts = [s.prompt for s in scenes]
    log(f"data: {len(X)} images {X.shape[1]}x{X.shape[2]}, {len(set(prompts))} prompts")
    with make_progress(progress) as prog:
        task = prog.add_task("VAE", total=cfg.vae_steps, loss=float("nan"))
        t0 = time.perf_counter()
        vae, res.losses["vae_mse"] = train_vae(X, cfg, ticker(prog, task, log, 100))
        res.seconds["vae"] = time.perf_counter() - t0
        log(f"VAE: {cfg.vae_steps} steps in {res.seconds['vae']:.0f}s, mse {res.losses['vae_mse'][-1]:.5f}")

        t0 = time.perf_counter()
        mu, sd = encode_all(vae, X)
        with torch.no_grad():
            rec = vae.decode(mu[:512]).sample
            res.notes["vae_recon_mse"] = F.mse_loss(rec, to_tensor(X[:512])).item()
        z = mu + sd * torch.randn(mu.shape, generator=torch.Generator().manual_seed(cfg.seed + 5))
        scale = float(1.0 / z.std())
        vae.register_to_config(scaling_factor=scale)
        res.notes["scaling_factor"] = scale
        log(f"latents: scaling_factor {scale:.4f}, recon mse {res.notes['vae_recon_mse']:.5f}")

        task = prog.add_task("UNet+TE", total=cfg.unet_steps, loss=float("nan"))
        unet, te, res.losses["unet_eps"] = train_unet(
            mu * scale, sd * scale, prompts, tok, cfg, ticker(prog, task, log)
        )
        res.seconds["unet"] = time.perf_counter() - t0
    log(f"UNet+TE: {cfg.unet_steps} steps in {res.seconds['unet']:.0f}s")
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
        scheduler=DPMSolverMultistepScheduler(**scheduler_kwargs(cfg.zero_snr)),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    os.makedirs(out, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    res.params = {"vae": nparams(vae), "text_encoder": nparams(te), "unet": nparams(unet)}
    res.seconds["total"] = res.seconds["vae"] + res.seconds["unet"]
    log(f"saved {out}; params {res.params}")
    return res
