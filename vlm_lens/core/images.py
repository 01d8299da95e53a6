"""Turn whatever a user passes as an image into an 8-bit RGB PIL image.

Processors expect RGB. Grayscale, palette, RGBA and 16-bit images are converted
here, explicitly, so no processor guesses: RGBA is composited over white (the
background a reader sees), 16-bit values are scaled to 8 bits rather than clipped.

Not for: resizing or normalising (the model's processor does that).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

ImageLike = Any  # PIL.Image.Image | str | Path | np.ndarray


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        # Floats are taken as [0, 1] intensities, the torchvision convention.
        return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        top = (
            65535
            if arr.max(initial=0) > 255 or arr.dtype in (np.uint16, np.int32, np.int64)
            else 255
        )
        return (arr.astype(np.float64) * (255.0 / top) + 0.5).astype(np.uint8)
    raise ValueError(f"unsupported image array dtype {arr.dtype}")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB view of a PIL image of any mode."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(image))).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(image: ImageLike) -> Image.Image:
    """An RGB PIL image from a PIL image, a file path, or an `[H, W]` / `[H, W, C]` array."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            with Image.open(path) as im:
                im.load()
                return to_rgb(im)
        except UnidentifiedImageError as err:
            raise ValueError(f"not an image file (PIL cannot identify it): {path}") from err
    if hasattr(image, "detach"):  # torch tensor, [C, H, W] as torchvision lays it out
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3, 4):
            image = np.moveaxis(image, 0, -1)
    if isinstance(image, np.ndarray):
        arr = _scale_to_uint8(image)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
            raise ValueError(f"image array must be [H, W] or [H, W, 3|4], got shape {image.shape}")
        return to_rgb(Image.fromarray(arr))
    raise TypeError(
        f"cannot use {type(image).__name__} as an image (expected PIL image, path or array)"
    )
