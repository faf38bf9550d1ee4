"""Toy world: the self-trained diffusion + LLaVA model pair that lumiserve serves by default.

``world`` (renderer, prompts, checker) is light; the trainers and ``evaluate`` import torch lazily.
"""

from lumiserve.toyworld.world import (
    COLOUR_NAMES,
    COLOURS,
    QUESTIONS,
    RES,
    SHAPES,
    Reading,
    Scene,
    classify,
    parse_prompt,
    prompt_of,
    render,
    render_scene,
    sample_scene,
)

__all__ = [
    "COLOURS",
    "COLOUR_NAMES",
    "QUESTIONS",
    "RES",
    "SHAPES",
    "Reading",
    "Scene",
    "classify",
    "parse_prompt",
    "prompt_of",
    "render",
    "render_scene",
    "sample_scene",
]
