"""Domain rules of the vision-language service without models: validation, presets, model entries,
stop sequences and incremental decoding."""

from __future__ import annotations

import pytest
from PIL import Image

from services.common.errors import InvalidArgument
from services.common.settings import SettingsError
from services.vision_language.catalog import ModelSpec, parse_model_entry
from services.vision_language.prompts import apply_preset, presets_for
from services.vision_language.requests import (
    ChatMessage,
    ImagePart,
    Preset,
    Role,
    SamplingParams,
    TextPart,
    validate_conversation,
    validate_sampling,
)
from services.vision_language.settings import VisionLanguageSettings
from services.vision_language.textstream import IncrementalDecoder, StopMatcher

IMAGE = ImagePart(Image.new("RGB", (8, 8)))


def msg(role: Role | None, *parts) -> ChatMessage:
    return ChatMessage(role, tuple(TextPart(p) if isinstance(p, str) else p for p in parts))


def field_of(call) -> str:
    with pytest.raises(InvalidArgument) as excinfo:
        call()
    return excinfo.value.field


def test_conversation_order_rules():
    good = [msg(Role.SYSTEM, "s"), msg(Role.USER, IMAGE, "q"), msg(Role.ASSISTANT, "a"), msg(Role.USER, "q2")]
    validate_conversation(good)
    validate_conversation(
        [msg(Role.SYSTEM, "s"), msg(Role.USER, "q"), msg(Role.ASSISTANT, "a")], ends_with_user=False
    )
    validate_conversation([], ends_with_user=False)
    assert field_of(lambda: validate_conversation([])) == "messages"
    assert field_of(lambda: validate_conversation([msg(None, "x")])) == "messages[0].role"
    assert field_of(lambda: validate_conversation([msg(Role.USER)])) == "messages[0].content"
    assert (
        field_of(lambda: validate_conversation([msg(Role.USER, "a"), msg(Role.USER, "b")]))
        == "messages[1].role"
    )
    assert (
        field_of(lambda: validate_conversation([msg(Role.SYSTEM, "s"), msg(Role.ASSISTANT, "a")]))
        == "messages[1].role"
    )
    assert (
        field_of(lambda: validate_conversation([msg(Role.USER, "q"), msg(Role.ASSISTANT, "a")]))
        == "messages[1].role"
    )
    assert field_of(lambda: validate_conversation([msg(Role.SYSTEM, IMAGE)])) == "messages[0].content[0]"
    assert (
        field_of(lambda: validate_conversation([msg(Role.USER, "q")], ends_with_user=False))
        == "messages[0].role"
    )


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (SamplingParams(temperature=float("nan")), "sampling.temperature"),
        (SamplingParams(temperature=-0.1), "sampling.temperature"),
        (SamplingParams(top_p=0.0), "sampling.top_p"),
        (SamplingParams(top_k=1001), "sampling.top_k"),
        (SamplingParams(repetition_penalty=2.5), "sampling.repetition_penalty"),
        (SamplingParams(max_new_tokens=101), "sampling.max_new_tokens"),
        (SamplingParams(max_new_tokens=5, min_new_tokens=6), "sampling.min_new_tokens"),
        (SamplingParams(min_new_tokens=101), "sampling.min_new_tokens"),
        (SamplingParams(stop=("x" * 129,)), "sampling.stop[0]"),
    ],
)
def test_sampling_ranges(params, field):
    assert field_of(lambda: validate_sampling(params, max_new_tokens_limit=100)) == field


def test_sampling_defaults_are_valid():
    validate_sampling(SamplingParams(), 100)
    validate_sampling(SamplingParams(temperature=2.0, top_p=1.0, top_k=1000, repetition_penalty=0.5), 100)


def test_presets_exist_for_every_family_and_expand():
    for family in ("llava", "llava_next", "toyworld", "generic", "unknown"):
        assert {t.preset for t in presets_for(family)} == {
            Preset.CAPTION_SHORT,
            Preset.CAPTION_DETAILED,
            Preset.VQA,
            Preset.OCR,
        }
    vqa = apply_preset(msg(Role.USER, IMAGE, "What colour?"), Preset.VQA, "llava", True)
    assert vqa.parts[0] is IMAGE and vqa.text.startswith("What colour?\nAnswer the question")
    caption = apply_preset(msg(Role.USER, IMAGE, "mention the sky"), Preset.CAPTION_SHORT, "toyworld", True)
    assert caption.text == "What is in this image?\nmention the sky"
    assert apply_preset(msg(Role.USER, "x"), Preset.NONE, "llava", False).text == "x"
    with pytest.raises(InvalidArgument, match="needs an image"):
        apply_preset(msg(Role.USER, "x"), Preset.OCR, "llava", False)
    with pytest.raises(InvalidArgument, match="question"):
        apply_preset(msg(Role.USER, IMAGE), Preset.VQA, "llava", True)


def test_model_entries():
    assert parse_model_entry("llava=/models/llava") == ModelSpec("llava", "/models/llava")
    spec = parse_model_entry(
        "big=org/llava-34b;dtype=bfloat16;context_window=8192;max_images=2;pin=true;variant=34b"
    )
    assert spec == ModelSpec(
        "big",
        "org/llava-34b",
        dtype="bfloat16",
        context_window=8192,
        max_images=2,
        pinned=True,
        variant="34b",
    )
    assert parse_model_entry("org/llava-1.5-7b-hf").model == "llava-1.5-7b-hf"
    for bad in (
        "=x",
        "a=",
        "a=b;dtype=int3",
        "a=b;context_window=0",
        "a=b;colour=red",
        "a=b;family=gpt",
        "a=b;pin",
    ):
        with pytest.raises(ValueError):
            parse_model_entry(bad)


def test_settings_validate_models():
    settings = VisionLanguageSettings.load(
        ["--models", "a=/x;dtype=float16,b=/y", "--default-model", "b"], environ={}
    )
    assert [s.model for s in settings.model_specs()] == ["a", "b"]
    assert settings.model_specs()[0].dtype == "float16"
    with pytest.raises(SettingsError, match="unique"):
        VisionLanguageSettings.load(["--models", "a=/x,a=/y"], environ={})
    with pytest.raises(SettingsError, match="default_model"):
        VisionLanguageSettings.load(["--models", "a=/x", "--default-model", "c"], environ={})
    with pytest.raises(SettingsError, match="dtype"):
        VisionLanguageSettings.load([], environ={"LUMISERVE_MODELS": "a=/x;dtype=fp8"})


def test_stop_matcher_holds_back_partial_matches_across_chunks():
    matcher = StopMatcher(("END", "##"))
    assert matcher.feed("hello E") == ("hello ", False)
    assert matcher.feed("N") == ("", False)
    assert matcher.feed("D and more") == ("", True)
    matcher = StopMatcher(("END",))
    assert matcher.feed("EN") == ("", False)
    assert matcher.feed("x") == ("ENx", False)
    assert matcher.flush() == ""
    matcher = StopMatcher(("stop",))
    assert matcher.feed("st") == ("", False)
    assert matcher.flush() == "st"
    assert StopMatcher(()).feed("anything") == ("anything", False)
    assert StopMatcher(("a#", "#")).feed("xy#z") == ("xy", True)  # the earliest stop wins


class ByteTokenizer:
    """Each id is one UTF-8 byte; decoding replaces broken sequences as real tokenizers do."""

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_incremental_decoder_releases_only_whole_characters():
    decoder = IncrementalDecoder(ByteTokenizer())
    text = "aé€!"
    out = [decoder.push(b) for b in text.encode()]
    assert "".join(out) == text
    assert out[1] == ""  # first byte of 'é' held back
    broken = IncrementalDecoder(ByteTokenizer())
    assert broken.push(0xE2) == ""
    assert broken.flush() == "\ufffd"
