"""Image codec used by every service: decoding with hard limits, encoding PNG / JPEG / WebP."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, PngImagePlugin

from lumiserve.common.v1 import common_pb2
from services.common.errors import InvalidArgument

MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
FORMAT_NAMES = {
    common_pb2.IMAGE_FORMAT_UNSPECIFIED: "PNG",
    common_pb2.IMAGE_FORMAT_PNG: "PNG",
    common_pb2.IMAGE_FORMAT_JPEG: "JPEG",
    common_pb2.IMAGE_FORMAT_WEBP: "WEBP",
}


@dataclass(frozen=True)
class ImageLimits:
    """Hard limits on untrusted images. Pixels are checked from the header, before decoding."""

    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 4096 * 4096


def decode_image(
    data: bytes, field: str, limits: ImageLimits = ImageLimits(), mode: str = "RGB"
) -> Image.Image:
    """Decodes PNG / JPEG / WebP bytes into a PIL image in `mode`; InvalidArgument naming `field` if bad."""
    if not data:
        raise InvalidArgument(field, "image is empty")
    if len(data) > limits.max_bytes:
        raise InvalidArgument(field, f"image is {len(data)} bytes, the limit is {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=tuple(MEDIA_TYPES))
            width, height = image.size
            if width * height > limits.max_pixels:
                raise InvalidArgument(
                    field,
                    f"image is {width}x{height} = {width * height} pixels, the limit is {limits.max_pixels}",
                )
            image.load()
    except InvalidArgument:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InvalidArgument(field, f"image refused as a decompression bomb: {error}") from None
    except Exception as error:
        raise InvalidArgument(
            field, f"not a decodable PNG, JPEG or WebP image ({type(error).__name__})"
        ) from None
    return image.convert(mode) if image.mode != mode else image


def decode_image_pb(
    image: common_pb2.Image, field: str, limits: ImageLimits = ImageLimits(), mode: str = "RGB"
) -> Image.Image:
    return decode_image(image.data, field, limits, mode)


def encode_image(
    image: Image.Image,
    fmt: str = "PNG",
    quality: int = 95,
    text: dict[str, str] | None = None,
    png_level: int = 6,
) -> bytes:
    """Encodes to PNG (with `text` as tEXt chunks, e.g. A1111 "parameters"; `png_level` is zlib's
    0-9), JPEG or WebP."""
    fmt = fmt.upper()
    if fmt not in MEDIA_TYPES:
        raise InvalidArgument(
            "output_format", f"unsupported format {fmt!r}; use one of {', '.join(MEDIA_TYPES)}"
        )
    buffer = io.BytesIO()
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        for key, value in (text or {}).items():
            info.add_text(key, value)
        image.save(buffer, "PNG", pnginfo=info, compress_level=png_level)
    else:
        rgb = image.convert("RGB") if fmt == "JPEG" and image.mode != "RGB" else image
        rgb.save(buffer, fmt, quality=quality)
    return buffer.getvalue()


def image_to_pb(
    image: Image.Image,
    image_format: int = common_pb2.IMAGE_FORMAT_PNG,
    quality: int = 0,
    text: dict[str, str] | None = None,
) -> common_pb2.Image:
    """Encodes a PIL image into the wire message (bytes, media type, size)."""
    fmt = FORMAT_NAMES[image_format]
    data = encode_image(image, fmt, quality or 95, text)
    return common_pb2.Image(data=data, media_type=MEDIA_TYPES[fmt], width=image.width, height=image.height)
