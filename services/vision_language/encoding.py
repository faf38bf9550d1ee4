"""A conversation -> model inputs through the model's chat template and processor, and the
context-window policy.

Context-window policy (documented in the README of the service and reported in Completion.truncation):
the prompt plus max_new_tokens must fit the model's context window. When it does not, the oldest turns
(a user message with the assistant reply that follows it) are dropped, oldest first, until it fits or
only the system messages and the newest user turn are left; system messages are never dropped. If the
newest turn still leaves less room than max_new_tokens, the reply is capped by the window (finish reason
LENGTH). A newest turn that does not fit the window at all is INVALID_ARGUMENT with the token counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from services.common.errors import InvalidArgument
from services.vision_language.model_cache import LoadedModel
from services.vision_language.requests import ChatMessage, ImagePart, Role, Truncation

# Per-image inputs that can be sliced by image (dimension 0 counts images) for LLaVA-style models.
PER_IMAGE_KEYS = ("pixel_values", "image_sizes")
SLICEABLE_FAMILIES = ("llava", "llava_next", "toyworld")


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The Hugging Face chat-template form: content parts `{"type": "image"}` / `{"type": "text"}`."""
    out = []
    for message in messages:
        content = [
            {"type": "image"} if isinstance(part, ImagePart) else {"type": "text", "text": part.text}
            for part in message.parts
        ]
        out.append({"role": str(message.role), "content": content})
    return out


def encode(loaded: LoadedModel, messages: list[ChatMessage]) -> dict[str, torch.Tensor]:
    """Single-row processor output (input ids with image tokens expanded, pixel values...)."""
    processor = loaded.processor
    text = processor.apply_chat_template(
        template_messages(messages), add_generation_prompt=True, tokenize=False
    )
    images = [image for message in messages for image in message.images]
    return dict(processor(text=text, images=images or None, return_tensors="pt", add_special_tokens=False))


def _length(encoding: dict[str, torch.Tensor]) -> int:
    return int(encoding["input_ids"].shape[1])


@dataclass
class FittedPrompt:
    inputs: dict[str, torch.Tensor]
    messages: list[ChatMessage]  # what is left of the conversation after truncation
    max_new_tokens: int
    truncation: Truncation | None

    @property
    def prompt_tokens(self) -> int:
        return _length(self.inputs)


def _turn_starts(messages: list[ChatMessage]) -> list[int]:
    """Indexes of the droppable turns: each non-system user message up to (not including) the last."""
    return [i for i, m in enumerate(messages[:-1]) if m.role is Role.USER]


def fit_context(
    loaded: LoadedModel, messages: list[ChatMessage], max_new_tokens: int, field: str = "messages"
) -> FittedPrompt:
    """Encodes `messages` (ending with the user turn to answer) under the context-window policy."""
    window = loaded.context_window
    encoding = encode(loaded, messages)
    original = _length(encoding)
    kept = messages
    while _length(encoding) + max_new_tokens > window and _turn_starts(kept):
        first = _turn_starts(kept)[0]
        following = [*_turn_starts(kept)[1:], len(kept) - 1]
        kept = kept[:first] + kept[following[0] :]
        encoding = encode(loaded, kept)
    length = _length(encoding)
    if length >= window:
        system = [m for m in kept if m.role is Role.SYSTEM]
        alone = _length(encode(loaded, kept[-1:])) if system else length
        raise InvalidArgument(
            f"{field}[{len(messages) - 1}]",
            f"the message takes {alone} tokens ({length} with the system messages and chat template), "
            f"but the context window of model {loaded.name!r} is {window} tokens, "
            "with at least 1 left for the reply",
        )
    truncation = None
    if len(kept) < len(messages):
        truncation = Truncation(len(messages) - len(kept), original - length, window)
    return FittedPrompt(encoding, kept, min(max_new_tokens, window - length), truncation)


@dataclass
class Reuse:
    """How much of a prompt a session's KV cache already covers."""

    cache: Any
    cached_tokens: int
    inputs: dict[str, torch.Tensor]  # the per-image inputs of images already in the cache removed


def reuse_cache(
    loaded: LoadedModel,
    inputs: dict[str, torch.Tensor],
    images: int,
    cache: Any,
    cached_ids: tuple[int, ...],
) -> Reuse | None:
    """Crops `cache` (in place) to the longest prefix it shares with the new prompt of `images` images.
    Only whole images count as cached: their pixels are then not sent again. None when nothing can be
    reused (the caller then drops the cache)."""
    ids = inputs["input_ids"][0].tolist()
    limit = min(len(cached_ids), len(ids) - 1)  # at least one new token goes through the model
    common = 0
    while common < limit and cached_ids[common] == ids[common]:
        common += 1
    image_positions = [i for i, t in enumerate(ids) if t == loaded.image_token_id]
    # An image's tokens are contiguous; a run split by the prefix end moves the end to the run's start.
    if common in image_positions and common - 1 in image_positions:
        while common - 1 in image_positions:
            common -= 1
    cached_images = _count_runs([p for p in image_positions if p < common])
    sliceable = loaded.family in SLICEABLE_FAMILIES and _count_runs(image_positions) == images
    if cached_images and not sliceable:
        common = image_positions[0] if image_positions else common
        cached_images = 0
    if common == 0:
        return None
    if common < cache.get_seq_length():
        cache.crop(common - cache.get_seq_length())  # negative: tokens to drop from the end
    sliced = dict(inputs)
    if cached_images:
        for key in PER_IMAGE_KEYS:
            if key in sliced:
                sliced[key] = sliced[key][cached_images:]
        if cached_images == images:
            for key in PER_IMAGE_KEYS:
                sliced.pop(key, None)
    return Reuse(cache, common, sliced)


def _runs(positions: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for p in positions:
        if runs and runs[-1][1] == p - 1:
            runs[-1] = (runs[-1][0], p)
        else:
            runs.append((p, p))
    return runs


def _count_runs(positions: list[int]) -> int:
    return len(_runs(positions))
