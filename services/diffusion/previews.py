"""Step previews: a cheap linear latent -> RGB projection by default, or the full VAE decode."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

# Linear latent -> RGB factors fitted for each VAE family (the ones A1111 / ComfyUI ship).
_SD1_FACTORS = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
]
_SDXL_FACTORS = [
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
]
_SDXL_BIAS = [0.1084, -0.0175, -0.0011]


def _factors(pipe: Any, channels: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    if channels != 4:
        return None
    is_xl = "XL" in type(pipe).__name__
    factors = torch.tensor(_SDXL_FACTORS if is_xl else _SD1_FACTORS)
    bias = torch.tensor(_SDXL_BIAS if is_xl else [0.0, 0.0, 0.0])
    return factors, bias


def _to_pil(rgb: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) floats in [0, 1] -> PIL images."""
    array = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]


def approximate(pipe: Any, latents: torch.Tensor, size: tuple[int, int]) -> list[Image.Image]:
    """Per-pixel linear projection of the latents, upscaled to `size` (w, h). Costs ~nothing."""
    latents = latents.detach().float().cpu()
    if latents.ndim != 4:  # packed / sequence latents (FLUX, ...): no spatial layout to project
        return []
    fitted = _factors(pipe, latents.shape[1])
    if fitted is not None:
        factors, bias = fitted
        rgb = torch.einsum("bchw,cr->brhw", latents, factors) + bias[None, :, None, None]
        rgb = (rgb + 1) / 2
    else:  # an unknown VAE: show the first three channels, normalised
        rgb = latents[:, :3]
        low = rgb.amin(dim=(2, 3), keepdim=True)
        rgb = (rgb - low) / (rgb.amax(dim=(2, 3), keepdim=True) - low + 1e-6)
    return [image.resize(size, Image.Resampling.BILINEAR) for image in _to_pil(rgb)]


@torch.no_grad()
def full_decode(pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    """Exact preview through the VAE: costs about a final decode per preview."""
    vae = pipe.vae
    scaled = latents.to(vae.dtype) / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        scaled = scaled + shift
    decoded = vae.decode(scaled, return_dict=False)[0]
    return _to_pil((decoded.float() + 1) / 2)


def render(pipe: Any, latents: torch.Tensor, method: str, size: tuple[int, int]) -> list[Image.Image]:
    if method == "full" and latents.ndim == 4 and getattr(pipe, "vae", None) is not None:
        return full_decode(pipe, latents)
    return approximate(pipe, latents, size)
