"""The one place where anything a user passes as an image becomes an 8-bit RGB PIL image.

Files, encoded bytes, PIL images, numpy arrays and torch tensors all come through
`load_image`, and so do benchmark images (`YesNoItem.load_images`, parquet cells), so
the same pixels give the same RGB values whichever way they arrive. Processors expect
RGB; every conversion is made here, explicitly, so no processor guesses.

Pixel values, by type:

* uint8: as is. bool: False -> 0, True -> 255.
* uint16, and 16-bit images read from files (PIL modes "I;16*", a 16-bit PNG): divided
  by 257 and rounded, so 65535 -> 255 and the scale is not clipped.
* Any other integer type (int8, int16, int32, int64, uint32, ..., PIL mode "I"): used
  as is when every value lies in 0..255, refused otherwise: int32 200 could mean
  200/255 or 200/65535, and guessing is how a picture turns black.
* Floats (and PIL mode "F"): must be finite and >= 0. Rule: maximum <= 1 -> the range
  is [0, 1] (scaled by 255); maximum <= 255 -> the range is [0, 255]; above -> refused.
  So a [0, 255] float image whose brightest pixel is <= 1 is read as [0, 1]; pass uint8
  when that matters.

Layout: numpy arrays are `[H, W]` or `[H, W, C]`; torch tensors `[H, W]` or `[C, H, W]`
(the torchvision layout); C is 1 (gray), 3 (RGB) or 4 (RGBA).

Colour: alpha (RGBA, LA, PA, a palette with a transparent entry) is composited over
white, the background a viewer shows; CMYK, YCbCr, LAB, HSV, 1-bit and palette images
go through PIL's own conversion to RGB. EXIF orientation is applied, so a phone photo
comes out upright, as every image viewer shows it.

Refused with `ImageDecodeError` (a ValueError): empty (0-pixel) images, NaN/inf or
out-of-range values, unidentifiable, truncated or corrupt files, and images above PIL's
decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`; raise it for a trusted huge
image). Every message ends its first sentence with the source: the file path, or the
`source=` label the caller passes (a benchmark's file and row).

Not for: resizing or normalising (the model's processor does that).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = Any  # PIL.Image.Image | str | Path | bytes | np.ndarray | torch.Tensor

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_EXIF_ORIENTATION = 0x0112


class ImageDecodeError(ValueError):
    """An image that cannot be turned into 8-bit RGB; the message names its source."""


def _fail(problem: str, source: str, hint: str = "") -> NoReturn:
    raise ImageDecodeError(f"{problem}: {source}" + (f". {hint}" if hint else ""))


def _to_uint8(arr: np.ndarray, source: str) -> np.ndarray:
    """Pixel values as uint8, by the dtype rules of the module docstring."""
    if arr.size == 0:
        _fail(f"image is empty (shape {tuple(arr.shape)})", source)
    kind = arr.dtype
    if kind == np.uint8:
        return arr
    if kind == np.bool_:
        return arr.astype(np.uint8) * 255
    if kind == np.uint16:
        # round(v / 257) in integers: floor((2v + 257) / 514).
        return ((arr.astype(np.uint32) * 2 + 257) // 514).astype(np.uint8)
    if np.issubdtype(kind, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            _fail(
                f"{kind} pixel values span {lo}..{hi}, outside 0..255",
                source,
                "Only uint8, uint16 (16-bit, divided by 257) and bool have a known range; "
                "convert other integer types to one of them to say what the values mean",
            )
        return arr.astype(np.uint8)
    if np.issubdtype(kind, np.floating):
        values = arr.astype(np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            _fail(
                f"image holds NaN or infinity ({int((~finite).sum())} of {values.size} values)",
                source,
            )
        lo, hi = float(values.min()), float(values.max())
        if lo < 0:
            _fail(f"float pixel values go below 0 (minimum {lo:g})", source)
        if hi > 255:
            _fail(
                f"float pixel values reach {hi:g}",
                source,
                "Floats are read as [0, 1] when their maximum is <= 1 and as [0, 255] "
                "when it is <= 255",
            )
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.floor(values * scale + 0.5).astype(np.uint8)
    _fail(f"unsupported pixel type {kind}", source)


def _from_array(arr: np.ndarray, source: str) -> Image.Image:
    """`[H, W]` or `[H, W, 1|3|4]` values -> RGB."""
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        _fail(f"image array must be [H, W] or [H, W, 1|3|4], got shape {tuple(arr.shape)}", source)
    pixels = np.ascontiguousarray(_to_uint8(arr, source))
    return _flatten(Image.fromarray(pixels), source)


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag, if any (without touching the caller's image)."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # an unreadable EXIF block says nothing about orientation
        return image
    return ImageOps.exif_transpose(image) if orientation in range(2, 9) else image


def _flatten(image: Image.Image, source: str) -> Image.Image:
    """RGB of a PIL image of any mode (alpha over white, 16-bit scaled, floats checked)."""
    if image.width == 0 or image.height == 0:
        _fail(f"image is empty ({image.width}x{image.height} pixels)", source)
    mode = image.mode
    if mode == "RGB":
        return image
    # PNG has no 32-bit integers: an older Pillow opens a 16-bit PNG as mode "I".
    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and image.format == "PNG"):
        return _from_array(np.asarray(image).astype(np.uint16), source)
    if mode in ("I", "F"):
        return _from_array(np.asarray(image), source)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as err:
        _fail(f"PIL cannot convert mode {mode!r} to RGB ({err})", source)


def _decode(fp: Any, source: str) -> Image.Image:
    """Decode an encoded image (open file or buffer) with PIL, refusing bombs and bad data."""
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its limit; the limit is the limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Not a context manager: closing would free the pixels of an image returned as is.
            image = Image.open(fp)
            image.load()
            return _flatten(_upright(image), source)
    except UnidentifiedImageError:
        _fail("not an image file (PIL cannot identify it)", source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        _fail(
            f"image is above the decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels "
            f"({err})",
            source,
            "Raise PIL.Image.MAX_IMAGE_PIXELS if you trust this file",
        )
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as err:
        _fail(f"image data is truncated or corrupt ({type(err).__name__}: {err})", source)


def _tensor_to_array(image: Any, source: str) -> np.ndarray:
    t = image.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16
        t = t.float()
    try:
        arr = t.numpy()
    except TypeError as err:
        _fail(f"unsupported tensor dtype {t.dtype} ({err})", source)
    if arr.ndim == 3:
        if arr.shape[0] not in (1, 3, 4):
            _fail(
                f"image tensor must be [H, W] or [C, H, W] with C 1, 3 or 4 (torchvision "
                f"layout), got shape {tuple(arr.shape)}",
                source,
                "Permute it, or pass a numpy [H, W, C] array",
            )
        arr = np.moveaxis(arr, 0, -1)
    return arr


def load_image(image: ImageLike, *, source: str | None = None) -> Image.Image:
    """An 8-bit RGB PIL image from a PIL image, a file path, encoded bytes, an array
    `[H, W]` / `[H, W, C]` or a tensor `[H, W]` / `[C, H, W]` (rules: module docstring).

    `source` names the image in error messages (default: the path, or the input type).
    """
    if isinstance(image, Image.Image):
        src = source or "PIL image"
        return _flatten(_upright(image), src)
    if isinstance(image, (str, Path)):
        path = Path(image)
        src = source or str(path)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {src}")
        with open(path, "rb") as fh:
            return _decode(fh, src)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(image)), source or "image bytes")
    if isinstance(image, torch.Tensor):
        src = source or "image tensor"
        return _from_array(_tensor_to_array(image, src), src)
    if isinstance(image, np.ndarray):
        return _from_array(image, source or "image array")
    raise TypeError(
        f"cannot use {type(image).__name__} as an image (expected a PIL image, a path, "
        f"bytes, an array or a tensor): {source or 'argument'}"
    )


__all__ = ["ImageDecodeError", "ImageLike", "load_image"]
