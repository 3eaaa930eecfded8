"""load_photo: every kind of upload becomes an upright RGB photo or a clear InputImageError."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from falco.config import FaceConfig
from falco.errors import InputImageError
from falco.faces import load_photo


@pytest.fixture(scope="module")
def photo(fixtures_dir):
    # Not square, so that a missed rotation changes the size.
    return Image.open(fixtures_dir / "align" / "astronaut.png").convert("RGB").crop((0, 0, 512, 384))


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size but holds no pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) \
        + chunk(b"IEND", b"")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int32)


def test_path_bytes_and_file_object_give_the_same_rgb_photo(photo, tmp_path):
    data = encode(photo)
    (tmp_path / "p.png").write_bytes(data)
    for source in (tmp_path / "p.png", str(tmp_path / "p.png"), data, io.BytesIO(data)):
        loaded = load_photo(source)
        assert loaded.mode == "RGB" and loaded.size == photo.size
        np.testing.assert_array_equal(pixels(loaded), pixels(photo))


@pytest.mark.parametrize("orientation, stored", [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90),
                                                 (8, Image.Transpose.ROTATE_270)])
def test_exif_orientation_is_honoured(photo, orientation, stored):
    # A camera stores the sensor's pixels and says in EXIF how to turn them upright.
    exif = Image.Exif()
    exif[0x0112] = orientation
    loaded = load_photo(encode(photo.transpose(stored), exif=exif))
    assert loaded.size == photo.size
    np.testing.assert_array_equal(pixels(loaded), pixels(photo))


def test_transparency_is_flattened_onto_white(photo):
    rgba = photo.convert("RGBA")
    alpha = np.full(photo.size[::-1], 255, np.uint8)
    alpha[:, :100] = 0
    rgba.putalpha(Image.fromarray(alpha))
    loaded = pixels(load_photo(encode(rgba)))
    assert (loaded[:, :100] == 255).all()
    np.testing.assert_array_equal(loaded[:, 100:], pixels(photo)[:, 100:])
    la = load_photo(encode(photo.convert("LA")))
    assert la.mode == "RGB"


def test_greyscale_palette_and_cmyk_become_rgb(photo):
    grey = load_photo(encode(photo.convert("L")))
    assert grey.mode == "RGB"
    np.testing.assert_array_equal(pixels(grey)[..., 0], pixels(photo.convert("L")))
    assert (pixels(grey)[..., 0] == pixels(grey)[..., 2]).all()
    palette = photo.quantize(64)
    np.testing.assert_array_equal(pixels(load_photo(encode(palette))), pixels(palette.convert("RGB")))
    cmyk = load_photo(encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG", quality=95))
    assert cmyk.mode == "RGB" and cmyk.size == (40, 30)
    r, g, b = pixels(cmyk)[15, 20]
    assert r > 200 and g < 60 and b < 60  # no cyan, full magenta and yellow: red


def test_sixteen_bit_images_are_scaled_to_eight_bits():
    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    expected = np.rint(ramp / 257.0)
    stored = Image.fromarray(ramp)
    assert stored.mode.startswith("I;16")
    for source in (encode(stored), encode(stored, "TIFF"), ramp):
        loaded = pixels(load_photo(source))
        np.testing.assert_array_equal(loaded[..., 0], expected)
        np.testing.assert_array_equal(loaded[..., 2], expected)


def test_arrays_of_each_layout_and_type(photo):
    rgb = np.asarray(photo)
    np.testing.assert_array_equal(pixels(load_photo(rgb)), rgb)
    np.testing.assert_array_equal(pixels(load_photo(rgb / 255.0)), rgb)
    assert load_photo(rgb[..., 0]).mode == "RGB"
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], -1)
    np.testing.assert_array_equal(pixels(load_photo(rgba)), rgb)
    with pytest.raises(InputImageError, match="shape"):
        load_photo(np.zeros((4, 4, 2), np.uint8))


def test_animated_and_multipage_files_use_the_first_frame():
    red, blue = Image.new("RGB", (32, 24), (255, 0, 0)), Image.new("RGB", (32, 24), (0, 0, 255))
    for fmt in ("GIF", "TIFF"):
        data = encode(red, fmt, save_all=True, append_images=[blue])
        assert Image.open(io.BytesIO(data)).n_frames == 2
        assert tuple(pixels(load_photo(data))[10, 10]) == (255, 0, 0)
    animated = Image.open(io.BytesIO(encode(red, "GIF", save_all=True, append_images=[blue])))
    animated.seek(1)
    assert tuple(pixels(load_photo(animated))[10, 10]) == (255, 0, 0)
    assert animated.tell() == 1  # the caller's image is where it was


def test_decompression_bomb_is_refused():
    for width in (20_000, 9_000):  # beyond PIL's own limit, and beyond ours (80 MP) only
        with pytest.raises(InputImageError, match="too large"):
            load_photo(png_header(width, width))
    with pytest.raises(InputImageError, match="too large"):
        load_photo(np.zeros((200, 200, 3), np.uint8), FaceConfig(max_image_pixels=10_000))
    with pytest.raises(InputImageError, match="too large"):
        load_photo(Image.new("RGB", (200, 200)), FaceConfig(max_image_pixels=10_000))


def test_truncated_file_is_refused(photo):
    data = encode(photo)
    with pytest.raises(InputImageError, match="truncated"):
        load_photo(data[: len(data) // 2])
    jpeg = encode(photo, "JPEG")
    with pytest.raises(InputImageError, match="truncated"):
        load_photo(jpeg[: len(jpeg) // 3])


def test_non_image_empty_and_missing_files_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello, not a picture")
    with pytest.raises(InputImageError, match="not an image"):
        load_photo(tmp_path / "notes.txt")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputImageError, match="empty"):
        load_photo(tmp_path / "empty.png")
    with pytest.raises(InputImageError, match="empty"):
        load_photo(b"")
    with pytest.raises(InputImageError, match="no file"):
        load_photo(tmp_path / "missing.jpg")


def test_zero_size_images_are_refused():
    with pytest.raises(InputImageError, match="empty"):
        load_photo(Image.new("RGB", (0, 10)))
    with pytest.raises(InputImageError, match="empty"):
        load_photo(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(InputImageError, match="empty image"):  # PIL cannot even open it
        load_photo(png_header(0, 10))


def test_input_is_never_modified(photo):
    exif = Image.Exif()
    exif[0x0112] = 6
    source = Image.open(io.BytesIO(encode(photo.transpose(Image.Transpose.ROTATE_90), exif=exif)))
    source.load()
    before = (source.mode, source.size, source.tobytes(), source.getexif().get(0x0112))
    loaded = load_photo(source)
    assert (source.mode, source.size, source.tobytes(), source.getexif().get(0x0112)) == before
    loaded.paste((0, 0, 0), (0, 0, 50, 50))
    assert source.tobytes() == before[2]

    array = np.asarray(photo).copy()
    kept = array.copy()
    loaded = load_photo(array)
    assert not np.shares_memory(np.asarray(loaded), array)
    loaded.paste((0, 0, 0), (0, 0, 50, 50))
    np.testing.assert_array_equal(array, kept)

    rgb = photo.copy()
    loaded = load_photo(rgb)
    assert loaded is not rgb
    loaded.paste((0, 0, 0), (0, 0, 50, 50))
    assert rgb.tobytes() == photo.tobytes()
