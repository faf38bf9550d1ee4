import io

import pytest
from PIL import Image

from lumiserve.common.v1 import common_pb2
from services.common.errors import InvalidArgument
from services.common.images import ImageLimits, decode_image, encode_image, image_to_pb


def _png(size=(20, 10), color=(255, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_round_trip_every_format(fmt):
    image = Image.new("RGB", (16, 8), (10, 200, 30))
    decoded = decode_image(encode_image(image, fmt, quality=100), "image")
    assert decoded.size == (16, 8)
    assert decoded.mode == "RGB"
    assert all(abs(a - b) <= 8 for a, b in zip(decoded.getpixel((8, 4)), (10, 200, 30), strict=True))


def test_png_text_metadata_is_embedded():
    data = encode_image(Image.new("RGB", (8, 8)), "PNG", text={"parameters": "a red circle\nSteps: 20"})
    assert Image.open(io.BytesIO(data)).text["parameters"] == "a red circle\nSteps: 20"


def test_png_level_trades_size_for_speed_and_keeps_the_pixels():
    image = Image.effect_noise((64, 64), 40).convert("RGB")
    stored, best = (encode_image(image, "PNG", png_level=level) for level in (0, 9))
    assert len(stored) > 64 * 64 * 3 > len(best)  # level 0 stores the pixels uncompressed
    assert decode_image(stored, "image").tobytes() == decode_image(best, "image").tobytes() == image.tobytes()


def test_image_to_pb_fills_media_type_and_size():
    message = image_to_pb(Image.new("RGB", (12, 4)), common_pb2.IMAGE_FORMAT_JPEG)
    assert (message.media_type, message.width, message.height) == ("image/jpeg", 12, 4)
    assert message.data[:2] == b"\xff\xd8"


def test_decode_converts_mode():
    assert decode_image(_png(), "mask", mode="L").mode == "L"


@pytest.mark.parametrize(
    ("data", "limits", "message"),
    [
        (b"", ImageLimits(), "image is empty"),
        (b"not an image at all", ImageLimits(), "not a decodable PNG, JPEG or WebP image"),
        (_png()[:40], ImageLimits(), "not a decodable"),
        (_png(), ImageLimits(max_bytes=10), "the limit is 10"),
        (_png((20, 10)), ImageLimits(max_pixels=199), "20x10 = 200 pixels, the limit is 199"),
    ],
)
def test_bad_images_raise_invalid_argument_naming_the_field(data, limits, message):
    with pytest.raises(InvalidArgument) as excinfo:
        decode_image(data, "init_image", limits)
    assert excinfo.value.field == "init_image"
    assert message in str(excinfo.value)


def test_decompression_bomb_is_refused_from_the_header():
    bomb = _png((6000, 6000), (0, 0, 0))  # 36 Mpx that compress to a few kB
    assert len(bomb) < 200_000
    with pytest.raises(InvalidArgument, match="the limit is 16777216"):
        decode_image(bomb, "image")


def test_unsupported_output_format():
    with pytest.raises(InvalidArgument, match="unsupported format 'BMP'"):
        encode_image(Image.new("RGB", (4, 4)), "BMP")
