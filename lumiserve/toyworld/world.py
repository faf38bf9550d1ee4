"""The toy world: one flat shape in one colour on a dark background.

This module is the single source of truth for both toy-world models: the renderer (training data for the
diffusion model and the VLM), the prompts / captions / questions, and a programmatic checker that reads
colour and shape back from an image (used by evaluations and tests). Pure numpy + PIL; no torch here.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 30),
    "blue": (40, 70, 245),
    "yellow": (240, 220, 20),
    "white": (240, 240, 240),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
RES = 32  # native resolution of both models

# Background scheme shared by both models: a dark colour, every channel uniform in [0, BG_MAX].
BG_MAX = 32
FILL_JITTER = 20  # +- per channel on the foreground colour
HALF_EXTENT = (0.18, 0.32)  # shape half-size as a fraction of the image side

QUESTIONS: dict[str, str] = {
    "caption": "What is in this image?",
    "colour": "What colour is the shape?",
    "shape": "What shape is it?",
}
Kind = Literal["caption", "colour", "shape", "position", "background"]

# Optional prompt phrases (the "extras" of the toy world, opt-in for training): where the shape is and
# which background it lies on. Plain prompts ("a red circle") leave both free.
POSITIONS: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
BACKGROUNDS: dict[str, tuple[int, int]] = {"black": (0, 10), "gray": (64, 80)}  # grey level range
POSITION_GAP = 0.08  # a positioned shape's centre lies at least this far from the middle line
EXTRA_QUESTIONS: dict[str, str] = {
    "position": "Where is the shape?",  # "on the left" / "on the right"
    "background": "What colour is the background?",
}

# Words that the CLIP tokenizer of the diffusion model keeps whole (one token each).
PROMPT_WORDS: tuple[str, ...] = (
    "a", "an", "the", "on", "of", "in", "left", "right", "top", "bottom", "background", "black",
    "gray", "dark", *COLOUR_NAMES, *SHAPES,
)  # fmt: skip

# Checker thresholds (brightest channel, bounding-box fill ratio).
FG_THRESHOLD = 110
TRIANGLE_MAX_FILL = 0.675
CIRCLE_MAX_FILL = 0.87


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw one toy-world image."""

    colour: str
    shape: str
    cx: float  # centre, as a fraction of the side
    cy: float
    half: float  # half extent, as a fraction of the side
    fill: tuple[int, int, int]
    background: tuple[int, int, int]
    position: str | None = None  # set when the scene was drawn for a position phrase
    background_name: str | None = None  # set when the scene was drawn for a background phrase

    @property
    def caption(self) -> str:
        """The caption that describes this scene, e.g. ``"a red circle"`` (never with the extras)."""
        return prompt_of(self.colour, self.shape)

    @property
    def prompt(self) -> str:
        """The prompt this scene was drawn for, with its position / background phrases if any."""
        return prompt_of(self.colour, self.shape, self.position, self.background_name)

    def answer(self, kind: Kind) -> str:
        """The expected answer to ``QUESTIONS[kind]`` (or ``EXTRA_QUESTIONS[kind]``)."""
        if kind == "position":  # the side, left or right (top/bottom scenes answer by their centre too)
            if self.position in ("left", "right"):
                return POSITIONS[self.position]
            return POSITIONS["left" if self.cx < 0.5 else "right"]
        if kind == "background":
            return self.background_name or "black"  # the default dark backgrounds read as black
        return {"caption": self.caption, "colour": self.colour, "shape": self.shape}[kind]


def prompt_of(colour: str, shape: str, position: str | None = None, background: str | None = None) -> str:
    """The prompt ``"a {colour} {shape}"``, optionally + ``" on the left"`` + ``" on a gray background"``."""
    if colour not in COLOURS or shape not in SHAPES:
        raise ValueError(f"unknown colour/shape: {colour!r} {shape!r}")
    if (position is not None and position not in POSITIONS) or (
        background is not None and background not in BACKGROUNDS
    ):
        raise ValueError(f"unknown position/background: {position!r} {background!r}")
    text = f"a {colour} {shape}"
    if position is not None:
        text += f" {POSITIONS[position]}"
    if background is not None:
        text += f" on a {background} background"
    return text


def all_prompts() -> list[tuple[str, str]]:
    """Every (colour, shape) pair, colour-major (15 pairs)."""
    return [(c, s) for c in COLOUR_NAMES for s in SHAPES]


_PROMPT_RE = re.compile(
    r"^\s*(?:an?|the)?\s*(" + "|".join(COLOUR_NAMES) + r")\s+(" + "|".join(SHAPES) + r")\s*\.?\s*$",
    re.IGNORECASE,
)


def parse_prompt(text: str) -> tuple[str, str] | None:
    """``"a red circle"`` -> ``("red", "circle")``; None when the text is not a plain toy-world prompt."""
    m = _PROMPT_RE.match(text)
    if m is None:
        return None
    return m.group(1).lower(), m.group(2).lower()


@dataclass(frozen=True)
class Spec:
    """What a (possibly extended) prompt asks for."""

    colour: str
    shape: str
    position: str | None = None
    background: str | None = None

    @property
    def text(self) -> str:
        """The canonical prompt."""
        return prompt_of(self.colour, self.shape, self.position, self.background)


_SPEC_RE = re.compile(
    r"^\s*(?:an?|the)?\s*(" + "|".join(COLOUR_NAMES) + r")\s+(" + "|".join(SHAPES) + r")"
    r"(?:\s+(" + "|".join(POSITIONS.values()) + r"))?"
    r"(?:\s+on\s+an?\s+(" + "|".join(BACKGROUNDS) + r")\s+background)?\s*\.?\s*$",
    re.IGNORECASE,
)


def parse_spec(text: str) -> Spec | None:
    """``"a red circle on the left on a gray background"`` -> ``Spec("red", "circle", "left", "gray")``."""
    m = _SPEC_RE.match(text)
    if m is None:
        return None
    phrase = m.group(3).lower() if m.group(3) else None
    position = next((k for k, v in POSITIONS.items() if v == phrase), None)
    return Spec(m.group(1).lower(), m.group(2).lower(), position, m.group(4).lower() if m.group(4) else None)


def sample_scene(
    rng: np.random.Generator,
    colour: str | None = None,
    shape: str | None = None,
    position: str | None = None,
    background: str | None = None,
) -> Scene:
    """Draw a random scene (colour/shape random unless given) with size, position and colour jitter.

    ``position`` ("left", ...) keeps the centre on that side, at least ``POSITION_GAP`` from the middle;
    ``background`` ("black", "gray") draws a grey level from ``BACKGROUNDS``. Without them the random
    draws are exactly those of a plain scene (a dark background, every channel in 0..``BG_MAX``).
    """
    colour = colour if colour is not None else COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
    shape = shape if shape is not None else SHAPES[int(rng.integers(len(SHAPES)))]
    if colour not in COLOURS or shape not in SHAPES:
        raise ValueError(f"unknown colour/shape: {colour!r} {shape!r}")
    if (position is not None and position not in POSITIONS) or (
        background is not None and background not in BACKGROUNDS
    ):
        raise ValueError(f"unknown position/background: {position!r} {background!r}")
    half = float(rng.uniform(*HALF_EXTENT))
    margin = half + 1.0 / RES
    if position is None:
        cx, cy = (float(v) for v in rng.uniform(margin, 1.0 - margin, size=2))
    else:
        lo, hi = np.array([margin, margin]), np.array([1.0 - margin, 1.0 - margin])
        axis = 0 if position in ("left", "right") else 1
        if position in ("left", "top"):
            hi[axis] = max(0.5 - POSITION_GAP, margin)
        else:
            lo[axis] = min(0.5 + POSITION_GAP, 1.0 - margin)
        cx, cy = (float(v) for v in rng.uniform(lo, hi))
    jit = rng.integers(-FILL_JITTER, FILL_JITTER + 1, size=3)
    fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jit, strict=True))
    if background is None:
        bg = tuple(int(v) for v in rng.integers(0, BG_MAX + 1, size=3))
    else:
        level = int(rng.integers(BACKGROUNDS[background][0], BACKGROUNDS[background][1] + 1))
        bg = tuple(int(np.clip(level + d, 0, 255)) for d in rng.integers(-3, 4, size=3))
    return Scene(colour, shape, cx, cy, half, fill, bg, position, background)  # type: ignore[arg-type]


def sample_extras(rng: np.random.Generator, p_position: float, p_background: float) -> tuple[str | None, ...]:
    """Random (position, background) names, each present with its probability, else None."""
    position = background = None
    if rng.random() < p_position:
        position = tuple(POSITIONS)[int(rng.integers(len(POSITIONS)))]
    if rng.random() < p_background:
        background = tuple(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    return position, background


def render_scene(scene: Scene, size: int = RES, supersample: int = 4) -> Image.Image:
    """Draw ``scene`` anti-aliased at ``size`` x ``size`` pixels (RGB)."""
    s = size * supersample
    img = Image.new("RGB", (s, s), scene.background)
    draw = ImageDraw.Draw(img)
    cx, cy, r = scene.cx * s, scene.cy * s, scene.half * s
    if scene.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=scene.fill)
    elif scene.shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=scene.fill)
    else:  # upright isosceles triangle: bounding-box fill ratio 0.5
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=scene.fill)
    return img.resize((size, size), Image.Resampling.BOX)


def render(
    colour: str | None = None,
    shape: str | None = None,
    rng: np.random.Generator | None = None,
    size: int = RES,
) -> tuple[Image.Image, Scene]:
    """Sample a scene and render it; returns ``(image, scene)``."""
    scene = sample_scene(rng if rng is not None else np.random.default_rng(), colour, shape)
    return render_scene(scene, size), scene


def make_dataset(
    n_per_class: int, seed: int = 0, size: int = RES, p_position: float = 0.0, p_background: float = 0.0
) -> tuple[np.ndarray, list[Scene]]:
    """``n_per_class`` renders of each of the 15 (colour, shape) pairs: uint8 array (N, H, W, 3) + scenes.

    With ``p_position`` / ``p_background`` > 0 a share of the scenes is drawn for a position / background
    phrase (``Scene.prompt`` then carries it); with both 0 (default) the data are plain scenes.
    """
    rng = np.random.default_rng(seed)
    extras = p_position > 0 or p_background > 0
    images, scenes = [], []
    for colour, shape in all_prompts():
        for _ in range(n_per_class):
            if extras:
                position, background = sample_extras(rng, p_position, p_background)
                scene = sample_scene(rng, colour, shape, position, background)
                img = render_scene(scene, size)
            else:
                img, scene = render(colour, shape, rng, size)
            images.append(np.asarray(img, dtype=np.uint8))
            scenes.append(scene)
    return np.stack(images), scenes


# ---------------------------------------------------------------- checker
@dataclass(frozen=True)
class Reading:
    """What the checker reads from an image; ``colour``/``shape`` are None when nothing was found."""

    colour: str | None
    shape: str | None
    fill_ratio: float
    cx: float = 0.5  # centre of the bounding box, as a fraction of the side
    cy: float = 0.5
    background_level: float = 0.0  # median brightest channel outside the shape

    @property
    def background(self) -> str:
        """``"gray"`` or ``"black"`` from the background level."""
        return "gray" if self.background_level > 45 else "black"

    def matches(self, spec: Spec) -> bool:
        """Whether the image shows what ``spec`` asks for (position and background only when given)."""
        if (self.colour, self.shape) != (spec.colour, spec.shape):
            return False
        if spec.position is not None:
            side = {
                "left": self.cx < 0.5,
                "right": self.cx > 0.5,
                "top": self.cy < 0.5,
                "bottom": self.cy > 0.5,
            }
            if not side[spec.position]:
                return False
        return spec.background is None or spec.background == self.background

    @property
    def caption(self) -> str | None:
        """The caption of what was read, or None."""
        if self.colour is None or self.shape is None:
            return None
        return prompt_of(self.colour, self.shape)


_PALETTE = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32)


def classify(image: Image.Image | np.ndarray) -> Reading:
    """Read the colour and shape of the single foreground shape on a dark background.

    Foreground: brightest channel > ``FG_THRESHOLD``. Colour: nearest palette colour to the mean of the
    foreground. Shape: soft fill ratio of the bounding box (triangle < 0.675 <= circle < 0.87 <= square),
    with the background level subtracted so that a dark background does not count as coverage.
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    a = np.asarray(image, dtype=np.float32)
    bright = a.max(axis=2)
    mask = bright > FG_THRESHOLD
    if mask.sum() < 6:
        return Reading(None, None, 0.0)
    rows = np.where(mask.sum(1) >= 2)[0]  # ignore stray pixels when measuring the bounding box
    cols = np.where(mask.sum(0) >= 2)[0]
    if len(rows) == 0 or len(cols) == 0:
        return Reading(None, None, 0.0)
    mean = a[mask].mean(0)
    colour = COLOUR_NAMES[int(np.argmin(((_PALETTE - mean) ** 2).sum(1)))]
    # soft coverage in [0, 1] relative to the background and foreground levels, inside the bounding box
    # of the thresholded mask grown by one pixel (anti-aliased edges count by their coverage)
    bg = float(np.median(bright[~mask])) if (~mask).any() else 0.0
    fg = float(bright[mask].mean())
    r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, a.shape[0])
    c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, a.shape[1])
    cov = np.clip((bright[r0:r1, c0:c1] - bg) / max(fg - bg, 1.0), 0.0, 1.0)
    cov[cov < 0.1] = 0.0
    h = float(cov.max(axis=1).sum())
    w = float(cov.max(axis=0).sum())
    fill = float(cov.sum() / max(h * w, 1.0))
    if fill < TRIANGLE_MAX_FILL:
        shape = "triangle"
    elif fill < CIRCLE_MAX_FILL:
        shape = "circle"
    else:
        shape = "square"
    cy = (r0 + float((cov.max(axis=1) * np.arange(r1 - r0)).sum()) / max(h, 1e-6) + 0.5) / a.shape[0]
    cx = (c0 + float((cov.max(axis=0) * np.arange(c1 - c0)).sum()) / max(w, 1e-6) + 0.5) / a.shape[1]
    return Reading(colour, shape, fill, cx, cy, bg)


# ---------------------------------------------------------------- CLIP tokenizer files (no transformers here)
def byte_alphabet() -> list[str]:
    """GPT-2/CLIP ``bytes_to_unicode``: the 256 printable stand-ins for raw bytes."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _word_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """BPE merges that build every word of ``words`` (left to right) into one ``word</w>`` token."""
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for word in sorted(words, key=lambda w: (-len(w), w)):
        syms = [*word[:-1], word[-1] + "</w>"]
        while len(syms) > 1:
            m = (syms[0], syms[1])
            if m not in seen:
                merges.append(m)
                seen.add(m)
            syms = [syms[0] + syms[1], *syms[2:]]
    return merges


def write_clip_vocab(folder: str, words: tuple[str, ...] = PROMPT_WORDS) -> None:
    """Write ``vocab.json`` + ``merges.txt`` of a byte-level CLIP BPE in which each of ``words`` is one token.

    Any text still tokenizes (256 byte tokens + their ``</w>`` variants); load with ``CLIPTokenizer``.
    """
    chars = byte_alphabet()
    merges = _word_merges(words)
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:  # CLIP skips line 1
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
