"""Image loading for captioning: any common file becomes an 8-bit RGB image, or a named error."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageLoadError(OSError):
    """An image that is missing or unreadable; the message names the file."""


_HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _stretch_to_uint8(image: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit or float single-band image linearly onto 0..255."""
    array = np.asarray(image, dtype=np.float64)
    low, high = float(np.nanmin(array)), float(np.nanmax(array))
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        scaled = np.zeros(array.shape, dtype=np.uint8)
    else:
        scaled = np.clip((np.nan_to_num(array, nan=low) - low) / (high - low) * 255.0, 0, 255).round()
        scaled = scaled.astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to RGB.

    Transparent pixels (RGBA, LA, palette images with transparency) are laid on
    white; grey and 16-bit images are spread to three equal bands.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_BIT_MODES:
        return _stretch_to_uint8(image).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image_rgb(path: str | os.PathLike | None) -> Image.Image:
    """Open an image file (JPEG, PNG, TIFF and others PIL reads) and return it as RGB.

    Raises:
        ImageLoadError: The path is ``None``, the file is missing, or PIL cannot
            decode it; the message names the file.
    """
    if path is None:
        raise ImageLoadError("the image has no file path; set 'image_dir' (or 'data_root') so images can be found")
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageLoadError(f"cannot read image {path}: {exc}") from exc
