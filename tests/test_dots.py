"""The dots dataset matches the paper's §3.1 spec, is deterministic, and round-trips on disk."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time

import numpy as np
import pytest

from vlm_lens.data import dots
from vlm_lens.data.paths import OutsideRootError

R = 10
SIZE = 1024


@pytest.fixture(scope="module")
def default_set() -> list[dots.DotsSample]:
    return dots.generate(256, seed=0)


def _edge_gaps(sample: dots.DotsSample) -> list[float]:
    return [
        math.dist(c1, c2) - r1 - r2
        for (c1, r1), (c2, r2) in itertools.combinations(zip(sample.centres, sample.radii), 2)
    ]


def _disc_pixels(x: float, y: float, r: float) -> tuple[np.ndarray, np.ndarray]:
    """Row / column indices of pixels whose centre is within r of (x, y), by brute force."""
    js = np.arange(math.floor(x - r) - 1, math.ceil(x + r) + 2)
    is_ = np.arange(math.floor(y - r) - 1, math.ceil(y + r) + 2)
    ii, jj = np.meshgrid(is_, js, indexing="ij")
    inside = (jj + 0.5 - x) ** 2 + (ii + 0.5 - y) ** 2 <= r * r
    return ii[inside], jj[inside]


# ------------------------------------------------------------------------ the spec


def test_default_spec_holds_for_every_sample(default_set):
    assert len(default_set) == 256
    counts = set()
    for s in default_set:
        assert s.size == (SIZE, SIZE) and s.background == 255
        assert 10 <= s.count <= 16
        counts.add(s.count)
        assert all(r == R for r in s.radii)
        assert all(isinstance(v, int) and 0 <= v <= 20 for v in s.intensities)
        for x, y in s.centres:
            assert R <= x <= SIZE - R and R <= y <= SIZE - R
        assert min(_edge_gaps(s)) >= 2 * R
    assert counts == set(range(10, 17))  # every count of the range occurs in 256 draws


def test_rendered_pixels_are_exactly_the_discs(default_set):
    for s in default_set:
        pixels = s.pixels()
        assert pixels.dtype == np.uint8 and pixels.shape == (SIZE, SIZE)
        n_disc = 0
        for (x, y), r, v in zip(s.centres, s.radii, s.intensities):
            rows, cols = _disc_pixels(x, y, r)
            assert abs(len(rows) - math.pi * r * r) <= 2 * math.pi * r * 0.5 + 1
            assert np.all(pixels[rows, cols] == v)
            n_disc += len(rows)
        # Discs are disjoint and dark, so this pins every other pixel to exactly 255.
        assert int((pixels != 255).sum()) == n_disc


def test_image_is_grayscale_pil():
    s = dots.generate(1, seed=3)[0]
    assert s.image.mode == "L" and s.image.size == (SIZE, SIZE)


def test_varied_radii_and_three_digit_counts():
    varied = dots.generate(32, seed=1, radius_range=(7, 13))
    radii = [r for s in varied for r in s.radii]
    assert min(radii) >= 7 and max(radii) <= 13 and len(set(radii)) > 10
    for s in varied:
        assert min(_edge_gaps(s)) >= 20  # default gap: twice the nominal (midpoint) radius
        for (x, y), r in zip(s.centres, s.radii):
            assert r <= x <= SIZE - r and r <= y <= SIZE - r
    many = dots.generate(8, seed=2, count_range=(100, 120))
    assert all(100 <= s.count <= 120 and min(_edge_gaps(s)) >= 20 for s in many)


def test_other_size_and_separation():
    samples = dots.generate(
        8, seed=4, size=(300, 200), radius=5, min_separation=3, count_range=(5, 9)
    )
    for s in samples:
        assert s.pixels().shape == (200, 300)
        assert min(_edge_gaps(s)) >= 3
        for x, y in s.centres:
            assert 5 <= x <= 295 and 5 <= y <= 195


# --------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_png_bytes():
    a = dots.generate(3, seed=7)
    b = dots.generate(3, seed=7)
    assert [s.to_png_bytes() for s in a] == [s.to_png_bytes() for s in b]


def test_different_seeds_differ():
    a = dots.generate(4, seed=0)
    b = dots.generate(4, seed=1)
    assert all(x.centres != y.centres for x, y in zip(a, b))
    assert not np.array_equal(a[0].pixels(), b[0].pixels())


def test_sample_i_does_not_depend_on_n():
    short = dots.generate(10, seed=5)
    long = dots.generate(20, seed=5)
    assert short == long[:10]
    assert np.array_equal(short[9].pixels(), long[9].pixels())


# ------------------------------------------------------------- impossible settings


def test_impossible_setting_fails_fast_with_clear_message():
    start = time.perf_counter()
    with pytest.raises(ValueError, match="impossible setting"):
        dots.generate(1, seed=0, size=256, radius=30, count_range=(500, 500))
    with pytest.raises(ValueError, match="does not fit"):
        dots.generate(1, seed=0, size=50, radius=30)
    assert time.perf_counter() - start < 1.0


def test_jammed_setting_is_bounded_by_tries():
    # Passes the packing bound (~189 fit at hexagonal density) but rejection sampling
    # jams near ~55% density (~115 dots): must stop after a bounded number of tries.
    start = time.perf_counter()
    with pytest.raises(ValueError, match="could not place 150 dots"):
        dots.generate(1, seed=0, size=256, radius=10, min_separation=0, count_range=(150, 150))
    assert time.perf_counter() - start < 10.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"count_range": (16, 10)},
        {"intensity_range": (0, 300)},
        {"intensity_range": (200, 255)},  # contains the background: invisible dots
        {"radius": 0},
        {"radius_range": (13, 7)},
        {"min_separation": -1},
    ],
)
def test_invalid_parameters_raise(kwargs):
    with pytest.raises(ValueError):
        dots.generate(1, seed=0, **kwargs)


# --------------------------------------------------------------------------- disk


def test_save_load_round_trip(tmp_path):
    # Fixed and float radii, and a non-empty meta, all have to survive JSON.
    control = dataclasses.replace(dots.control_set(2, seed=9)[1], index=4)
    samples = [*dots.generate(4, seed=9), control]
    index = dots.save(samples, tmp_path)
    assert index == tmp_path / "samples.jsonl"
    lines = index.read_text().splitlines()
    assert len(lines) == 5
    assert json.loads(lines[2])["image"] == "images/00002.png"
    assert (tmp_path / "images" / "00004.png").is_file()

    loaded = dots.load(tmp_path)
    assert loaded == samples
    for a, b in zip(samples, loaded):
        assert b.image_path is not None
        assert np.array_equal(a.pixels(), b.pixels())
        assert a.to_record() == b.to_record()


def test_load_names_missing_file_and_field(tmp_path):
    dots.save(dots.generate(2, seed=0), tmp_path)
    with pytest.raises(FileNotFoundError, match="samples.jsonl"):
        dots.load(tmp_path / "nowhere")

    (tmp_path / "images" / "00001.png").unlink()
    with pytest.raises(FileNotFoundError, match="00001.png"):
        dots.load(tmp_path)

    dots.save(dots.generate(2, seed=0), tmp_path)
    index = tmp_path / "samples.jsonl"
    records = [json.loads(line) for line in index.read_text().splitlines()]
    del records[1]["radii"]
    index.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match=r"samples.jsonl:2: missing field\(s\) 'radii'"):
        dots.load(tmp_path)


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink"])
def test_load_keeps_image_paths_inside_the_directory(tmp_path, kind):
    samples = dots.generate(2, seed=0)
    data = tmp_path / "set"
    dots.save(samples, data)
    outside = tmp_path / "elsewhere.png"
    (data / "images" / "00001.png").rename(outside)
    name = {
        "absolute": str(outside),
        "dotdot": "../elsewhere.png",
        "symlink": "images/link.png",
    }[kind]
    if kind == "symlink":
        (data / "images" / "link.png").symlink_to(outside)
    index = data / "samples.jsonl"
    records = [json.loads(line) for line in index.read_text().splitlines()]
    records[1]["image"] = name
    index.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(OutsideRootError, match=r"dots: path .* in .*samples\.jsonl:2"):
        dots.load(data)
    loaded = dots.load(data, allow_outside_root=True)
    assert np.array_equal(loaded[1].pixels(), samples[1].pixels())


def test_save_rejects_duplicate_indices(tmp_path):
    s = dots.generate(1, seed=0)[0]
    with pytest.raises(ValueError, match="duplicate"):
        dots.save([s, s], tmp_path)


# -------------------------------------------------------------------- control set


def test_control_set_decorrelates_count_and_dark_area(default_set):
    control = dots.control_set(256, seed=0)
    c_counts = np.array([s.count for s in control])
    c_area = np.array([s.dark_area() for s in control])
    d_counts = np.array([s.count for s in default_set])
    d_area = np.array([s.dark_area() for s in default_set])
    assert abs(np.corrcoef(c_counts, c_area)[0, 1]) < 0.3
    assert np.corrcoef(d_counts, d_area)[0, 1] > 0.9
    # Still a valid counting set: counts in range, one radius per image, separation kept.
    for s in control:
        assert 10 <= s.count <= 16 and len(set(s.radii)) == 1
        assert min(_edge_gaps(s)) >= 2 * R
        assert s.dark_area() == pytest.approx(s.meta["target_area"], rel=0.1)


# ------------------------------------------------------------ counterfactual pairs


@pytest.mark.parametrize("clean_has_added", [True, False])
def test_counterfactual_pairs_differ_by_one_dot(clean_has_added):
    pairs = dots.counterfactual_pairs(16, seed=0, clean_has_added=clean_has_added)
    for p in pairs:
        big, small = p.with_added, p.without_added
        assert (p.clean is big) == clean_has_added
        assert p.clean.meta["role"] == "clean" and p.corrupted.meta["role"] == "corrupted"
        assert big.count == small.count + 1 and small.count >= 10 and big.count <= 16
        assert big.centres[:-1] == small.centres
        assert big.radii[:-1] == small.radii
        assert big.intensities[:-1] == small.intensities
        assert big.centres[-1] == p.added_centre

        x, y = p.added_centre
        assert p.added_radius == R and 0 <= p.added_intensity <= 20
        assert R <= x <= SIZE - R and R <= y <= SIZE - R
        assert min(math.dist(p.added_centre, c) for c in small.centres) - 2 * R >= 2 * R

        a, b = big.pixels(), small.pixels()
        assert a.shape == b.shape
        mask = p.added_mask()
        assert np.array_equal(a != b, mask)  # identical outside the added disc
        assert np.all(a[mask] == p.added_intensity) and np.all(b[mask] == 255)


def test_counterfactual_pairs_need_two_counts():
    with pytest.raises(ValueError, match="two counts"):
        dots.counterfactual_pairs(1, seed=0, count_range=(12, 12))


@pytest.mark.parametrize("quadrant", range(4))
def test_empty_quadrant_keeps_that_quarter_free_at_high_counts(quadrant):
    samples = dots.generate(
        4, 9, count_range=(28, 30), radius_range=(7, 13), empty_quadrant=quadrant
    )
    for s in samples:
        assert 28 <= s.count <= 30 and s.meta["empty_quadrant"] == quadrant
        pixels = np.asarray(s.image.convert("L"))  # [height, width]
        top, left = (quadrant // 2) * 512, (quadrant % 2) * 512
        assert pixels[top : top + 512, left : left + 512].min() == 255
        others = [q for q in range(4) if q != quadrant]
        assert any(
            pixels[(q // 2) * 512 : (q // 2) * 512 + 512, (q % 2) * 512 : (q % 2) * 512 + 512].min()
            < 128
            for q in others
        )
    with pytest.raises(ValueError, match="quadrant must be 0-3"):
        dots.generate(1, 0, empty_quadrant=4)


# ------------------------------------------------------------ content-free images

# SHA-256 of the PNG bytes below, produced by the code before `content_free` existed
# (main at bfc7662): adding a family must not move any existing stream.
EXISTING_SETS_SHA256 = "0c6b47c639fe9242251efbf87878e90b2f1909c28e8c966db292ef8ca74c40db"


def test_existing_datasets_stay_byte_identical():
    import hashlib

    h = hashlib.sha256()
    for s in dots.generate(4, seed=3):
        h.update(s.to_png_bytes())
    for s in dots.control_set(3, seed=2):
        h.update(s.to_png_bytes())
    for p in dots.counterfactual_pairs(2, seed=1):
        h.update(p.clean.to_png_bytes())
        h.update(p.corrupted.to_png_bytes())
    for s in dots.generate(
        2, seed=5, size=(300, 200), radius_range=(5, 9), count_range=(3, 6), empty_quadrant=1
    ):
        h.update(s.to_png_bytes())
    assert h.hexdigest() == EXISTING_SETS_SHA256


def test_blank_images_keep_size_and_background_and_nothing_else():
    source = dots.generate(3, seed=1, size=(300, 200), radius=6, background=240)
    blank = dots.content_free(source, "blank")
    for s, b in zip(source, blank):
        assert (b.index, b.size, b.background, b.count) == (s.index, s.size, 240, 0)
        assert b.meta == {"family": "blank", "source_seed": 1}
        pixels = b.pixels()
        assert pixels.shape == (200, 300) and (pixels == 240).all()


def test_shuffled_images_move_the_same_dots_deterministically():
    source = dots.generate(6, seed=2, radius_range=(7, 13))
    shuffled = dots.content_free(source, "shuffled", seed=5)
    again = dots.content_free(list(reversed(source)), "shuffled", seed=5)[::-1]
    other = dots.content_free(source, "shuffled", seed=6)
    for s, m, a, o in zip(source, shuffled, again, other):
        assert (m.count, m.radii, m.intensities, m.size) == (
            s.count,
            s.radii,
            s.intensities,
            s.size,
        )
        assert m.to_png_bytes() == a.to_png_bytes()  # depends on (seed, index) only
        assert m.centres != s.centres and m.centres != o.centres
        gap = 2 * float(np.mean(m.radii))  # the default separation
        assert min(_edge_gaps(m)) >= gap - 1e-9
        assert all(
            r <= x <= m.width - r and r <= y <= m.height - r
            for (x, y), r in zip(m.centres, m.radii)
        )
        assert m.meta == {"family": "shuffled", "source_seed": 2}
    with pytest.raises(ValueError, match="kind must be one of"):
        dots.content_free(source, "scrambled")
