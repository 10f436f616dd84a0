"""Image files of every common kind become RGB; a bad file raises an error that names it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trsllava_utils.captioning import ImageLoadError, load_image_rgb


def test_load_demo_jpeg_and_tiff(data_root):
    jpeg = load_image_rgb(data_root / "demo" / "images" / "00001.jpg")
    tiff = load_image_rgb(data_root / "demo" / "images" / "ucm_1.tif")
    assert (jpeg.mode, jpeg.size) == ("RGB", (224, 224))
    assert (tiff.mode, tiff.size) == ("RGB", (256, 256))


def test_load_rgba_png_on_white(tmp_path):
    path = tmp_path / "a.png"
    image = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    image.putpixel((1, 0), (10, 20, 30, 255))
    image.save(path)
    loaded = load_image_rgb(path)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 0)) == (10, 20, 30)


def test_load_grey(tmp_path):
    path = tmp_path / "g.png"
    Image.new("L", (3, 3), 77).save(path)
    assert load_image_rgb(path).getpixel((1, 1)) == (77, 77, 77)


def test_load_palette_with_transparency(tmp_path):
    path = tmp_path / "p.png"
    image = Image.new("P", (2, 1), 0)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    image.save(path, transparency=0)
    loaded = load_image_rgb(path)
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 0)) == (200, 100, 50)


def test_load_16_bit_tiff_stretched(tmp_path):
    path = tmp_path / "d.tif"
    Image.fromarray(np.array([[1000, 3000], [2000, 5000]], dtype=np.uint16)).save(path)
    loaded = load_image_rgb(path)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (0, 0, 0)
    assert loaded.getpixel((1, 1)) == (255, 255, 255)
    assert loaded.getpixel((0, 1)) == (64, 64, 64)


def test_load_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match="image file not found: .*nope.tif"):
        load_image_rgb(tmp_path / "nope.tif")


def test_load_corrupt_file(tmp_path):
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"definitely not an image")
    with pytest.raises(ImageLoadError, match="cannot read image .*bad.jpg"):
        load_image_rgb(path)


def test_load_truncated_jpeg(tmp_path, data_root):
    path = tmp_path / "cut.jpg"
    path.write_bytes((data_root / "demo" / "images" / "00001.jpg").read_bytes()[:2000])
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        load_image_rgb(path)


def test_load_no_path():
    with pytest.raises(ImageLoadError, match="image_dir"):
        load_image_rgb(None)
