"""One decoding path: the same pixels give the same RGB (or the same error) whichever way
they arrive - array, tensor, PIL image, file, bytes, a benchmark item, a parquet cell."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from vlm_lens.data.images import ImageDecodeError, load_image
from vlm_lens.data.yesno import YesNoItem, load_mme

# ------------------------------------------------------------------------ helpers


def encode(arr: np.ndarray) -> bytes:
    """The file form of an array: PNG when PNG can hold its values, else a TIFF.

    PIL has no signed 8-bit mode (its fromarray reads int8 -3 as 253), so signed
    integers are stored as 32-bit integer TIFFs; floats as 32-bit float TIFFs.
    """
    if arr.dtype.kind == "i":
        arr = arr.astype(np.int32)
    image = Image.fromarray(arr)
    fmt = "PNG" if image.mode in ("1", "L", "RGB", "RGBA", "I;16") else "TIFF"
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def as_tensor(arr: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.permute(2, 0, 1) if t.ndim == 3 else t  # torchvision's [C, H, W]


def mme_parquet(path: Path, cells: list[dict]) -> Path:
    rows = [
        {
            "question_id": f"color/{k}.png",
            "image": cell,
            "question": f"Is it red {k}? Please answer yes or no.",
            "answer": "Yes",
            "category": "color",
        }
        for k, cell in enumerate(cells)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
    return path


def every_entry_point(arr: np.ndarray, tmp_path: Path) -> dict[str, object]:
    """Callables that decode `arr` through each entry point."""
    data = encode(arr)
    path = tmp_path / ("img.png" if data[:4] == b"\x89PNG" else "img.tif")
    path.write_bytes(data)
    parquet = mme_parquet(tmp_path / "mme" / "test.parquet", [{"bytes": data, "path": "x"}])
    item = YesNoItem("pope", "1", "u", [str(path)], "q?", "q?", True)
    return {
        "array": lambda: load_image(arr),
        "tensor": lambda: load_image(as_tensor(arr)),
        "pil": lambda: load_image(Image.open(io.BytesIO(data))),
        "file": lambda: load_image(path),
        "bytes": lambda: load_image(data),
        "item file": lambda: item.load_images()[0],
        "parquet cell": lambda: load_mme(parquet)[0].load_images()[0],
    }


# -------------------------------------------------------- same pixels, every way in

RGBA = np.zeros((2, 2, 4), np.uint8)
RGBA[..., 0] = 200
RGBA[0, 0, 3] = 255  # one opaque red pixel; the rest is fully transparent
RGBA[1, 1, 3] = 128  # half transparent: 200 * 128/255 + 255 * 127/255 over white

DECODED = {
    # int32 values 0..255 are taken as is (the old code read 200 as 200/65535 -> 1).
    "int32 in 0..255": (
        np.array([[0, 200], [255, 17]], np.int32),
        np.array([[0, 200], [255, 17]]),
    ),
    # Transparent is white (a viewer's background), never black.
    "RGBA": (RGBA, None),
    # 16-bit: v / 257, rounded (32896 = 128 * 257).
    "uint16": (np.array([[0, 257], [32896, 65535]], np.uint16), np.array([[0, 1], [128, 255]])),
    "bool": (np.array([[True, False]]), np.array([[255, 0]])),
    # Floats with max > 1 are [0, 255]: 200.5 rounds to 201, 0.4 to 0.
    "float 0..255": (np.array([[0.4, 200.5]], np.float32), np.array([[0, 201]])),
    # Floats with max <= 1 are [0, 1]: 0.5 * 255 = 127.5 rounds to 128.
    "float 0..1": (np.array([[0.0, 0.5, 1.0]], np.float32), np.array([[0, 128, 255]])),
}


def expected_rgb(name: str, arr: np.ndarray, gray: np.ndarray | None) -> np.ndarray:
    if name == "RGBA":
        out = np.full((2, 2, 3), 255, np.uint8)
        out[0, 0] = (200, 0, 0)
        # alpha 128: c * 128/255 + 255 * 127/255 -> red 227, green/blue 127.
        out[1, 1] = (227, 127, 127)
        return out
    assert gray is not None
    return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=-1)


@pytest.mark.parametrize("name", list(DECODED))
def test_same_pixels_through_every_entry_point(name, tmp_path):
    arr, gray = DECODED[name]
    want = expected_rgb(name, arr, gray)
    for way, decode in every_entry_point(arr, tmp_path).items():
        got = decode()
        assert got.mode == "RGB", way
        assert np.array_equal(np.asarray(got), want), (way, np.asarray(got))


REFUSED = {
    "int32 beyond 255": (np.array([[0, 300]], np.int32), r"pixel values span 0\.\.300"),
    "int8 negative": (np.array([[-3, 4]], np.int8), r"pixel values span -3\.\.4"),
    "NaN": (np.array([[np.nan, 0.5]], np.float32), r"NaN or infinity \(1 of 2 values\)"),
    "inf": (np.array([[np.inf, 0.5]], np.float32), r"NaN or infinity"),
    "float beyond 255": (np.array([[0.0, 300.0]], np.float32), r"float pixel values reach 300"),
    "float negative": (np.array([[-0.5, 0.5]], np.float32), r"go below 0"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_same_error_through_every_entry_point(name, tmp_path):
    arr, problem = REFUSED[name]
    for way, decode in every_entry_point(arr, tmp_path).items():
        with pytest.raises(ImageDecodeError) as err:
            decode()
        assert re.search(problem, str(err.value)), (way, str(err.value))


def test_errors_name_their_source(tmp_path):
    arr = np.array([[np.nan, 0.5]], np.float32)
    ways = every_entry_point(arr, tmp_path)
    for way, where in [
        ("file", r"img\.tif"),
        ("item file", r"img\.tif \(pope item '1'\)"),
        (
            "parquet cell",
            r"MME image cell in column 'image', row group 0, row 0 of .*test\.parquet",
        ),
        ("array", "image array"),
        ("tensor", "image tensor"),
    ]:
        with pytest.raises(ImageDecodeError, match=where):
            ways[way]()
    with pytest.raises(ImageDecodeError, match="NaN.*: my label"):
        load_image(arr, source="my label")


def test_empty_images_are_refused():
    for image in (
        np.zeros((0, 0), np.uint8),
        np.zeros((0, 3, 3), np.uint8),
        torch.zeros(3, 0, 4),
        Image.new("L", (0, 0)),
    ):
        with pytest.raises(ImageDecodeError, match="image is empty"):
            load_image(image)


def test_layouts():
    red = np.zeros((3, 2, 3), np.uint8)
    red[..., 0] = 255
    assert load_image(red).size == (2, 3)
    assert load_image(as_tensor(red)).size == (2, 3)
    assert load_image(red[..., :1]).getpixel((0, 0)) == (255, 255, 255)  # [H, W, 1] is gray
    with pytest.raises(ImageDecodeError, match=r"\[C, H, W\].*got shape \(2, 5, 3\)"):
        load_image(torch.zeros(2, 5, 3))  # [H, W, C] as a tensor: ambiguous, refused
    with pytest.raises(ImageDecodeError, match=r"\[H, W\] or \[H, W, 1\|3\|4\]"):
        load_image(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ImageDecodeError, match="unsupported pixel type complex"):
        load_image(np.zeros((2, 2), np.complex64))
    with pytest.raises(TypeError, match="cannot use list as an image"):
        load_image([[0, 1]])
    # bfloat16 has no numpy twin: it is widened, not refused.
    assert load_image(torch.full((3, 2, 2), 1.0, dtype=torch.bfloat16)).getpixel((0, 0)) == (
        255,
        255,
        255,
    )


# ------------------------------------------------------------------- PIL's own modes


def test_pil_modes_are_converted_by_pil_rules():
    # CMYK with no ink is white; a transparent palette entry is white; LA alpha 0 is white.
    assert load_image(Image.new("CMYK", (2, 2), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([0, 0, 0, 10, 20, 30])
    pal.putpixel((1, 1), 1)
    pal.info["transparency"] = 0
    out = load_image(pal)
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (10, 20, 30)
    assert load_image(Image.new("LA", (2, 2), (50, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.new("1", (2, 2), 1)).getpixel((0, 0)) == (255, 255, 255)


def test_a_16_bit_png_opened_as_mode_I_is_scaled_like_I16():
    # Older Pillow opens a 16-bit PNG as mode "I"; PNG has no 32-bit integers.
    im = Image.fromarray(np.array([[0, 32896, 65535]], np.int32))
    im.format = "PNG"
    assert [load_image(im).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    im.format = None  # a 32-bit integer image of unknown meaning
    with pytest.raises(ImageDecodeError, match=r"pixel values span 0\.\.65535"):
        load_image(im)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (3, 2), (0, 0, 255))
    im.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buf = io.BytesIO()
    im.save(buf, format="PNG", exif=exif)
    data = buf.getvalue()
    path = tmp_path / "phone.png"
    path.write_bytes(data)
    parquet = mme_parquet(tmp_path / "p" / "test.parquet", [{"bytes": data, "path": "x"}])
    for got in (
        load_image(path),
        load_image(data),
        load_image(Image.open(path)),
        load_mme(parquet)[0].load_images()[0],
    ):
        # 3 wide x 2 high turned clockwise is 2 wide x 3 high; top-left goes top-right.
        assert got.size == (2, 3)
        assert got.getpixel((1, 0)) == (255, 0, 0) and got.getpixel((0, 0)) == (0, 0, 255)
    # The caller's own image object is left as it was.
    original = Image.open(path)
    load_image(original)
    assert original.size == (3, 2)


# ------------------------------------------------------------------- files gone bad


def noise_png(size: int = 64) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_truncated_png_names_the_file(tmp_path):
    data = noise_png()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(ImageDecodeError, match=r"truncated or corrupt.*: .*cut\.png"):
        load_image(path)
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    with pytest.raises(ImageDecodeError, match=r"not an image file.*notes\.png"):
        load_image(notes)
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        load_image(tmp_path / "missing.png")


def test_corrupt_parquet_cell_names_file_row_group_and_row(tmp_path):
    good = {"bytes": noise_png(4), "path": "x"}
    cut = noise_png()
    cells = [good, good, good, {"bytes": cut[: len(cut) // 2], "path": "x"}]
    items = load_mme(mme_parquet(tmp_path / "m" / "test.parquet", cells))
    assert items[2].load_images()[0].size == (4, 4)
    # Row 3 of the file is row 1 of row group 1 (two rows per group).
    with pytest.raises(
        ImageDecodeError,
        match=r"truncated or corrupt.*MME image cell in column 'image', row group 1, row 1 of "
        r".*test\.parquet",
    ):
        items[3].load_images()
    cells[1] = {"bytes": b"garbage", "path": "x"}
    items = load_mme(mme_parquet(tmp_path / "g" / "test.parquet", cells))
    with pytest.raises(ImageDecodeError, match=r"not an image file.*row group 0, row 1 of"):
        items[1].load_images()


def test_decompression_bomb_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    for side in (8, 12):  # 64 pixels: PIL only warns; 144 > 2 x 50: PIL raises
        buf = io.BytesIO()
        Image.new("RGB", (side, side)).save(buf, "PNG")
        path = tmp_path / f"big{side}.png"
        path.write_bytes(buf.getvalue())
        with pytest.raises(
            ImageDecodeError,
            match=rf"above the decompression-bomb limit of 50 pixels.*big{side}\.png.*"
            r"MAX_IMAGE_PIXELS",
        ):
            load_image(path)
        parquet = mme_parquet(tmp_path / f"p{side}" / "t.parquet", [{"bytes": buf.getvalue()}])
        with pytest.raises(ImageDecodeError, match=r"decompression-bomb.*row group 0, row 0"):
            load_mme(parquet)[0].load_images()
    buf = io.BytesIO()
    Image.new("RGB", (7, 7)).save(buf, "PNG")  # 49 pixels: under the limit
    assert load_image(buf.getvalue()).size == (7, 7)
