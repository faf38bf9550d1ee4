"""Task presets: prompt templates per model family that a request can name instead of writing a prompt.

Templates follow what each family was trained or evaluated with (LLaVA-1.5's evaluation prompts:
"Answer the question using a single word or phrase." for short VQA); `toyworld` is the project's own
toy LLaVA, trained on three questions (caption, colour, shape); caption presets use its caption one.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.errors import InvalidArgument
from services.vision_language.requests import ChatMessage, ImagePart, Preset, TextPart


@dataclass(frozen=True)
class PresetTemplate:
    preset: Preset
    # `{question}` is replaced by the user's text (VQA); other presets append the user's text, if any,
    # as further instructions.
    prompt: str
    default_max_new_tokens: int


def _table(caption: str, detailed: str, vqa: str, ocr: str) -> dict[Preset, PresetTemplate]:
    return {
        Preset.CAPTION_SHORT: PresetTemplate(Preset.CAPTION_SHORT, caption, 48),
        Preset.CAPTION_DETAILED: PresetTemplate(Preset.CAPTION_DETAILED, detailed, 384),
        Preset.VQA: PresetTemplate(Preset.VQA, vqa, 32),
        Preset.OCR: PresetTemplate(Preset.OCR, ocr, 512),
    }


_GENERIC = _table(
    caption="Describe this image in one short sentence.",
    detailed="Describe this image in detail.",
    vqa="{question}\nAnswer the question using a single word or phrase.",
    ocr="Extract all the text in this image. Reply with the text only, line by line, in reading order.",
)
FAMILY_PRESETS: dict[str, dict[Preset, PresetTemplate]] = {
    "generic": _GENERIC,
    "llava": _table(
        caption="Provide a one-sentence caption for the provided image.",
        detailed="Describe the image in detail.",
        vqa="{question}\nAnswer the question using a single word or phrase.",
        ocr="What is the text in the image? Reply with all of the text only, line by line.",
    ),
    "llava_next": _table(
        caption="Provide a one-sentence caption for the provided image.",
        detailed="Describe this image in detail, including any objects, people, text and their layout.",
        vqa="{question}\nAnswer the question using a single word or phrase.",
        ocr="Extract all the text in this image. Reply with the text only, line by line, in reading order.",
    ),
    "toyworld": _table(
        caption="What is in this image?",
        detailed="What is in this image?",
        vqa="{question}",
        ocr="What is in this image?",
    ),
}


def presets_for(family: str) -> list[PresetTemplate]:
    return list(FAMILY_PRESETS.get(family, _GENERIC).values())


def preset_template(family: str, preset: Preset) -> PresetTemplate:
    return FAMILY_PRESETS.get(family, _GENERIC)[preset]


def apply_preset(
    message: ChatMessage, preset: Preset, family: str, has_image: bool, field: str = "messages"
) -> ChatMessage:
    """The user turn with its text replaced by the preset's prompt (images stay where they are).
    `has_image`: whether the conversation holds an image to talk about."""
    if preset is Preset.NONE:
        return message
    name = f"TASK_PRESET_{preset.name}"
    if not has_image:
        raise InvalidArgument(field, f"{name} needs an image in the conversation")
    template = preset_template(family, preset)
    text = message.text.strip()
    if "{question}" in template.prompt:
        if not text:
            raise InvalidArgument(f"{field}.content", f"{name} needs the question as text")
        prompt = template.prompt.format(question=text)
    else:
        prompt = f"{template.prompt}\n{text}" if text else template.prompt
    images = tuple(p for p in message.parts if isinstance(p, ImagePart))
    return ChatMessage(message.role, (*images, TextPart(prompt)))
