"""What a model id stands for: its source and per-model options (dtype, context window, family...).

A settings entry reads `ID=SOURCE;key=value;...`, e.g. `llava-7b=llava-hf/llava-1.5-7b-hf;dtype=float16`.
Size variants (7B / 13B / 34B) are separate entries with their own id and context window.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from services.common.settings import split_model_entry

DTYPES = ("auto", "float32", "float16", "bfloat16")
FAMILIES = ("llava", "llava_next", "toyworld", "generic")


@dataclass(frozen=True)
class ModelSpec:
    """How to load one model. Zero / empty fields mean "from the model's own config" or the default."""

    model: str
    source: str
    revision: str | None = None
    variant: str = ""
    dtype: str = "auto"
    context_window: int = 0
    max_images: int = 0
    family: str = ""
    device: str = ""
    pinned: bool = False

    def replace(self, **changes: object) -> ModelSpec:
        return dataclasses.replace(self, **changes)


def _positive_int(key: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{key}={raw!r}: expected a positive integer") from None
    if value <= 0:
        raise ValueError(f"{key}={raw!r}: expected a positive integer")
    return value


def parse_model_entry(entry: str, default_dtype: str = "auto") -> ModelSpec:
    """Parses `ID=SOURCE;key=value...` (or just `SOURCE`, whose last path part becomes the id)."""
    model, source, options = split_model_entry(entry)
    if not model or not source:
        raise ValueError(f"{entry!r}: expected ID=SOURCE with a model id and a repo id or folder")
    fields: dict[str, object] = {"dtype": default_dtype}
    for option in options:
        key, sep, value = option.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise ValueError(f"{entry!r}: option {option!r} is not key=value")
        if key == "dtype":
            if value not in DTYPES:
                raise ValueError(f"dtype={value!r}: must be one of {', '.join(DTYPES)}")
            fields["dtype"] = value
        elif key in ("context_window", "max_images"):
            fields[key] = _positive_int(key, value)
        elif key == "family":
            if value not in FAMILIES:
                raise ValueError(f"family={value!r}: must be one of {', '.join(FAMILIES)}")
            fields["family"] = value
        elif key in ("variant", "revision", "device"):
            fields[key] = value
        elif key == "pin":
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"pin={value!r}: must be true or false")
            fields["pinned"] = value.lower() in ("true", "1")
        else:
            raise ValueError(
                f"unknown option {key!r} in {entry!r}; use dtype, context_window, max_images, family, "
                "variant, revision, device or pin"
            )
    return ModelSpec(model=model, source=source, **fields)  # type: ignore[arg-type]
