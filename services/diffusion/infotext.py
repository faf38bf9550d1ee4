"""A1111-style "parameters" text: what A1111 / SD.Next / civitai read back from a PNG."""

from __future__ import annotations

from services.diffusion.requests import GenerationRequest


def _quote(value: str) -> str:
    """A1111 quotes values holding its separators."""
    if any(c in value for c in ',:"\n'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return value


def infotext(request: GenerationRequest, seed: int, sampler: str) -> str:
    """The "parameters" text of one image (`seed` is that image's own seed)."""
    fields: list[tuple[str, object]] = [
        ("Steps", request.steps),
        ("Sampler", sampler),
    ]
    if request.sigma_schedule != "default":
        fields.append(("Schedule type", request.sigma_schedule.capitalize()))
    fields += [
        ("CFG scale", f"{request.guidance_scale:g}"),
        ("Seed", seed),
        ("Size", f"{request.width}x{request.height}"),
        ("Model", request.model),
    ]
    if request.task != "txt2img":
        fields.append(("Denoising strength", f"{request.strength:g}"))
    if request.clip_skip > 1:
        fields.append(("Clip skip", request.clip_skip))
    if request.mask is not None:
        fields.append(("Mask blur", request.mask.blur))
        fields.append(("Masked content", request.mask.fill.replace("_", " ")))
        if request.mask.invert:
            fields.append(("Mask mode", "Inpaint not masked"))
    for i, unit in enumerate(request.controlnet_units):
        value = (
            f"Model: {unit.model}, Weight: {unit.scale:g}, "
            f"Guidance Start: {unit.start:g}, Guidance End: {unit.end:g}"
        )
        fields.append((f"ControlNet {i}", value))
    fields.append(("Version", "lumiserve"))
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(str(value))}" for key, value in fields))
    return "\n".join(lines)
