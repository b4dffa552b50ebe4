import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from studio.dataset.checks import size_issues, train_size
from studio.dataset.images import BadImage, prepare_image
from tests.conftest import make_image
from tests.dataset_helpers import encoded, jpeg


def png_with_header(width: int, height: int) -> bytes:
    """A PNG claiming a huge size with almost no data: what a decompression bomb looks like."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


NOISY_JPEG = encoded(Image.fromarray(np.random.default_rng(1).integers(0, 255, (256, 256, 3), dtype=np.uint8)), "JPEG")
NOISY_PNG = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "PNG")


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"hello, this is a text file\n" * 20, "not an image"),
    (jpeg()[:400], "truncated or corrupt"),
    (NOISY_JPEG[:len(NOISY_JPEG) * 2 // 3], "truncated or corrupt"),
    (NOISY_PNG[:len(NOISY_PNG) // 2], "truncated or corrupt"),
    (NOISY_PNG[:100] + bytes(255 - b for b in NOISY_PNG[100:300]) + NOISY_PNG[300:], "truncated or corrupt"),
    (png_with_header(100_000, 100_000), "decompression bomb"),
    (png_with_header(9000, 9000), "decompression bomb"),
])
def test_bad_files_are_refused_with_a_reason(data, reason):
    with pytest.raises(BadImage, match=reason) as caught:
        prepare_image(data, "photo.jpg")
    assert str(caught.value).startswith("photo.jpg: ")


def test_plain_jpeg_and_png_are_kept_byte_for_byte():
    for data, ext in ((jpeg(), "jpg"), (encoded(make_image(), "PNG"), "png")):
        prepared = prepare_image(data, "x")
        assert prepared.payload == data and prepared.ext == ext and prepared.notes == []
        assert (prepared.width, prepared.height) == (96, 64)


def _decoded(prepared) -> Image.Image:
    image = Image.open(io.BytesIO(prepared.payload))
    image.load()
    return image


def test_cmyk_becomes_rgb_jpeg():
    prepared = prepare_image(encoded(make_image().convert("CMYK"), "JPEG"), "cmyk.jpg")
    assert _decoded(prepared).mode == "RGB" and prepared.ext == "jpg"
    assert any("CMYK" in note for note in prepared.notes)


def test_sixteen_bit_png_is_scaled_not_clipped():
    values = np.full((8, 8), 65535 // 2, dtype=np.uint16)
    prepared = prepare_image(encoded(Image.fromarray(values), "PNG"), "deep.png")
    image = _decoded(prepared)
    assert image.mode == "RGB"
    assert abs(image.getpixel((0, 0))[0] - 127) <= 1  # mid-grey, not white
    assert prepared.notes


def test_palette_and_alpha_become_rgb_with_alpha_on_white():
    palette = prepare_image(encoded(make_image().convert("P"), "PNG"), "p.png")
    assert _decoded(palette).mode == "RGB" and "palette" in palette.notes[0]
    transparent = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    transparent.putpixel((0, 0), (0, 0, 255, 255))
    flat = _decoded(prepare_image(encoded(transparent, "PNG"), "a.png"))
    assert flat.mode == "RGB"
    assert flat.getpixel((5, 5)) == (255, 255, 255) and flat.getpixel((0, 0)) == (0, 0, 255)


def test_other_formats_are_re_encoded_as_png():
    prepared = prepare_image(encoded(make_image(), "WEBP", lossless=True), "x.webp")
    assert prepared.ext == "png" and _decoded(prepared).format == "PNG"


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = encoded(make_image(96, 64), "JPEG", exif=exif.tobytes())
    prepared = prepare_image(data, "rotated.jpg")
    assert (prepared.width, prepared.height) == (64, 96)
    assert _decoded(prepared).size == (64, 96)
    assert any("orientation" in note for note in prepared.notes)


def test_train_size_follows_max_pixels_and_multiples_of_16():
    assert train_size(512, 512) == (512, 512)
    assert train_size(1000, 700) == (992, 688)
    assert train_size(2048, 2048) == (1024, 1024)
    assert train_size(4000, 3000, max_pixels=262144) == (576, 432)


def test_size_mismatch_warns_with_training_sizes():
    (same_aspect,) = size_issues((512, 512), (1024, 1024))
    assert same_aspect["level"] == "warning" and "differ in size" in same_aspect["message"]
    (aspect,) = size_issues((640, 480), (512, 512))
    assert "aspect" in aspect["message"] and "640×480" in aspect["message"]
    assert size_issues((300, 300), (300, 300)) == []
    assert size_issues((8, 8), (8, 8))[0]["level"] == "error"


def test_instructions_empty_is_an_error_and_very_long_a_warning():
    from studio.dataset.checks import MAX_INSTRUCTION_CHARS, instruction_issues

    assert instruction_issues("  ")[0]["level"] == "error"
    assert instruction_issues("make the sky blue") == []
    assert instruction_issues("x" * MAX_INSTRUCTION_CHARS) == []
    (long,) = instruction_issues("x" * (MAX_INSTRUCTION_CHARS + 1))
    assert long["level"] == "warning" and "1001 characters" in long["message"]
