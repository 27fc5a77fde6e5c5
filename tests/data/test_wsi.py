"""Whole-slide reading on pyramidal TIFFs written here (real ihc.png tissue on white glass, `wsi_slides`): levels
and microns per pixel from the metadata, tissue found where it was pasted, tile grids counted by hand, tile pixels
equal to the written pixels, the resolution picking its level, and the errors a user meets."""

import numpy as np
import pytest

from medjax.data import wsi
from medjax.data import wsi_synthetic as W
from medjax.errors import MedjaxError


@pytest.fixture(scope="module")
def slide_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("wsi") / "slide.tif"
    levels = W.write_slide(path, W.level0(0, speck=True))
    return path, levels


@pytest.fixture(scope="module")
def slide(slide_file):
    with wsi.open_slide(str(slide_file[0])) as s:
        yield s


def test_levels_dimensions_and_mpp_come_from_the_file(slide):
    assert slide.level_dimensions == ((768, 512), (384, 256), (192, 128), (96, 64))
    assert slide.level_downsamples == (1.0, 2.0, 4.0, 8.0)
    assert slide.mpp == pytest.approx(0.25, abs=1e-12) and slide.level_mpp(2) == pytest.approx(1.0)
    assert slide.objective_power is None  # a generic TIFF has no scanner magnification


def test_read_region_returns_the_written_pixels(slide, slide_file):
    levels = slide_file[1]
    np.testing.assert_array_equal(slide.read_region((200, 100), 0, (40, 30)), levels[0][100:130, 200:240])
    # level-0 coordinates, level-2 pixels: (200, 100) -> (50, 25)
    np.testing.assert_array_equal(slide.read_region((200, 100), 2, (20, 10)), levels[2][25:35, 50:70])
    np.testing.assert_array_equal(slide.read_level(3), levels[3])


def test_otsu_and_small_object_removal_equal_scikit_image():
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_objects

    r = np.random.default_rng(0)
    values = np.concatenate([r.normal(0.1, 0.05, 500), r.normal(0.6, 0.1, 300)])
    assert wsi.otsu_threshold(values) == threshold_otsu(values)
    mask = r.random((40, 40)) > 0.6
    # scikit-image 0.26 removes objects of at most max_size pixels: ours keeps those of at least min_size
    np.testing.assert_array_equal(wsi.remove_small_objects(mask, 5), remove_small_objects(mask, max_size=4))


def test_tissue_mask_finds_the_pasted_tissue_and_drops_the_speck(slide):
    level1 = slide.read_level(1)  # 2 x 2 pixels per 4 x 4 speck at (450, 40) of level 0
    mask = wsi.tissue_mask(level1)
    assert mask[225:227, 20:22].all()  # Otsu alone keeps the stained speck
    assert not wsi.tissue_mask(level1, min_size=5)[225:227, 20:22].any()
    truth = np.zeros(mask.shape, bool)
    for r0, r1, c0, c1 in W.TISSUE_BLOCKS:
        truth[r0 * 32:r1 * 32, c0 * 32:c1 * 32] = True
    assert not (mask & ~truth)[:200].any()  # nothing on the glass (above the speck's rows)
    # the same mask as scikit-image's HSV saturation, Otsu threshold and small-object removal
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_objects

    sat = rgb2hsv(level1)[..., 1]
    np.testing.assert_array_equal(wsi.tissue_mask(level1, min_size=5),
                                  remove_small_objects(sat > threshold_otsu(sat), max_size=4))
    assert not wsi.tissue_mask(np.full((8, 8, 3), 240, np.uint8)).any()  # a blank slide has no tissue
    grey = wsi.tissue_mask(level1, channel="grey", min_size=5)
    assert not (grey & ~truth).any()


def test_tile_grid_at_20x_finds_the_tissue_tiles_and_their_pixels(slide, slide_file):
    grid = wsi.tile_grid(slide, 32, magnification=20)
    assert (grid.level, grid.read_size, grid.footprint, grid.stride, grid.mpp) == (1, 32, 64.0, 64.0, 0.5)
    assert grid.grid_shape == (8, 12) and grid.tissue_level == 3  # 64 level-0 px = 8 px at level 3
    assert [tuple(c) for c in grid.cells] == W.tissue_cells() and len(grid) == W.NUM_TISSUE_TILES
    np.testing.assert_array_equal(grid.coords, grid.cells[:, ::-1] * 64)
    # tissue fraction: each tile is exactly an 8 x 8 block of the level-3 mask (specks under a tile's area dropped)
    mask = wsi.tissue_mask(slide.read_level(3), min_size=64)
    np.testing.assert_allclose(grid.tissue, [mask[8 * r:8 * r + 8, 8 * c:8 * c + 8].mean() for r, c in grid.cells])
    tiles = wsi.read_tiles(slide, grid)
    assert tiles.shape == (18, 32, 32, 3) and tiles.dtype == np.uint8
    level1 = slide_file[1][1]
    for t, (x, y) in zip(tiles, grid.coords):
        np.testing.assert_array_equal(t, level1[y // 2:y // 2 + 32, x // 2:x // 2 + 32])
    np.testing.assert_array_equal(wsi.read_tiles(slide, grid, [3, 0]), tiles[[3, 0]])
    assert wsi.tiles_to_float(tiles[:1]).dtype == np.float32 and wsi.tiles_to_float(tiles).max() <= 1.0
    heat = wsi.grid_values(grid, np.arange(18.0))
    assert heat.shape == (8, 12) and heat[1, 2] == 0.0 and heat[6, 10] == 17.0 and np.isnan(heat[0, 0])
    assert len(wsi.tile_grid(slide, 32, magnification=20, min_tissue=0.0)) == 96  # every position


def test_resolution_picks_the_level_and_resizes_when_it_must(slide, slide_file):
    levels = slide_file[1]
    at10 = wsi.tile_grid(slide, 32, mpp=1.0)  # 10x: level 2 exactly, 128 level-0 px per tile
    assert (at10.level, at10.read_size, at10.footprint, at10.grid_shape) == (2, 32, 128.0, (4, 6))
    x, y = at10.coords[0] // 4
    np.testing.assert_array_equal(wsi.read_tiles(slide, at10, [0])[0], levels[2][y:y + 32, x:x + 32])
    odd = wsi.tile_grid(slide, 32, mpp=0.6)  # 2.4 level-0 px per tile pixel: level 1 (2x), 38 px resized to 32
    assert (odd.level, odd.read_size, odd.footprint) == (1, 38, pytest.approx(76.8))
    assert wsi.read_tiles(slide, odd, [0]).shape == (1, 32, 32, 3)
    native = wsi.tile_grid(slide, 32)  # neither mpp nor magnification: level-0 pixels
    assert (native.level, native.read_size, native.mpp, native.grid_shape) == (0, 32, None, (16, 24))
    # each 64-pixel tissue block is 2 x 2 tiles; one quarter of this slide's ihc crop is under half tissue
    assert {(r // 2, c // 2) for r, c in native.cells} == set(W.tissue_cells()) and len(native) == 71
    # overlap: 16 of 32 pixels shared -> stride 16 level-0 px; (768 - 32) / 16 + 1 = 47 columns, 31 rows
    over = wsi.tile_grid(slide, 32, overlap=16, min_tissue=0.0)
    assert (over.stride, over.grid_shape, len(over)) == (16.0, (31, 47), 31 * 47)
    np.testing.assert_array_equal(over.coords[:3], [[0, 0], [16, 0], [32, 0]])
    # a 40.5x request is 0.247 µm/px: within 10% of level 0's 0.25, read at level 0 and upsampled
    assert wsi.tile_grid(slide, 32, magnification=40.5).level == 0


def test_a_missing_magnification_and_missing_mpp_are_one_clear_line(slide, tmp_path):
    with pytest.raises(MedjaxError, match=r"slide\.tif: its finest level has 0\.25 µm/px \(about 40x\), coarser than "
                                          r"the requested 0\.125 µm/px \(80x\); request a lower magnification"):
        wsi.tile_grid(slide, 32, magnification=80)
    with pytest.raises(MedjaxError, match=r"mpp=0\.5 and config\.data\.magnification=20 both set"):
        wsi.tile_grid(slide, 32, mpp=0.5, magnification=20)
    path = tmp_path / "no_mpp.tif"
    W.write_slide(path, W.level0(1), mpp=None, levels=2)
    with wsi.open_slide(str(path)) as bare:
        assert bare.mpp is None
        with pytest.raises(MedjaxError, match=r"no_mpp\.tif: the slide's metadata give no microns per pixel, which "
                                              r"tiles at 0\.5 µm/px need; pass its level-0 µm/px by hand "
                                              r"\(config\.data\.slide_mpp"):
            wsi.tile_grid(bare, 32, magnification=20)
        assert wsi.tile_grid(bare, 32).level == 0  # level-0 pixels need no mpp
    with wsi.open_slide(str(path), mpp=0.25) as given:
        assert len(wsi.tile_grid(given, 32, magnification=20)) == W.NUM_TISSUE_TILES
    with pytest.raises(MedjaxError, match=r"nope\.svs: no such slide file"):
        wsi.open_slide(str(tmp_path / "nope.svs"))
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(MedjaxError, match=r"bad\.tif: cannot read the slide with tiffslide"):
        wsi.open_slide(str(tmp_path / "bad.tif"))
    with pytest.raises(MedjaxError, match=r"unknown slide reader 'pillow'"):
        wsi.open_slide(str(path), reader="pillow")


def test_openslide_reads_the_same_tiles(slide, slide_file):
    pytest.importorskip("openslide")
    grid = wsi.tile_grid(slide, 32, magnification=20)
    with wsi.open_slide(str(slide_file[0]), reader="openslide") as other:
        assert other.level_dimensions == slide.level_dimensions and other.mpp == pytest.approx(0.25)
        np.testing.assert_array_equal(wsi.read_tiles(other, grid), wsi.read_tiles(slide, grid))


def test_a_subifd_pyramid_reads_like_an_ifd_pyramid(tmp_path, slide_file):
    """tifffile's other pyramid layout (levels as SubIFDs of level 0, as e.g. OME-TIFF writes): tiffslide reads
    the same levels and mpp."""
    import tifffile

    levels = slide_file[1]
    path = tmp_path / "subifd.tif"
    with tifffile.TiffWriter(str(path), bigtiff=False) as tif:
        kw = dict(tile=(64, 64), photometric="rgb", resolutionunit="CENTIMETER")
        tif.write(levels[0], subifds=len(levels) - 1, resolution=(4e4, 4e4), **kw)
        for i, lv in enumerate(levels[1:], start=1):
            tif.write(lv, subfiletype=1, resolution=(4e4 / 2**i,) * 2, **kw)
    with wsi.open_slide(str(path)) as s:
        assert s.level_downsamples == (1.0, 2.0, 4.0, 8.0) and s.mpp == pytest.approx(0.25)
        grid = wsi.tile_grid(s, 32, magnification=20)
        assert len(grid) == W.NUM_TISSUE_TILES
        np.testing.assert_array_equal(s.read_level(2), levels[2])
