"""Image/mask folders on real pictures (scikit-image's fundus photo and camera man) in PNG, TIFF, GIF and JPEG."""

import hashlib
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from medjax.data.image_folder import find_pairs, fov_weights, load_image_folder
from medjax.errors import MedjaxError

S = 64  # every picture is shrunk to S x S so the module stays fast


@pytest.fixture(scope="module")
def pictures():
    import skimage.data

    retina = np.asarray(Image.fromarray(skimage.data.retina()).resize((S, S), Image.Resampling.BILINEAR))
    camera = np.asarray(Image.fromarray(skimage.data.camera()).resize((S, S), Image.Resampling.BILINEAR))
    yy, xx = np.mgrid[:S, :S]
    fov = ((yy - 31.5) ** 2 + (xx - 31.5) ** 2 <= 30 ** 2).astype(np.uint8) * 255  # the fundus disc
    vessels = ((retina[..., 1] < np.percentile(retina[..., 1][fov > 0], 20)) & (fov > 0)).astype(np.uint8) * 255
    three = np.zeros((S, S), np.uint8)  # three classes stored as 0 / 128 / 255
    three[8:40, 8:40] = 128
    three[30:60, 30:60] = 255
    return {"retina": retina, "camera": camera, "fov": fov, "vessels": vessels, "three": three}


def _save(path, array, **kw):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


@pytest.fixture(scope="module")
def drive(tmp_path_factory, pictures):
    """DRIVE-like: images in four formats, 0/255 masks (PNG/TIFF/GIF), FOV masks named <stem>_mask.gif."""
    root = tmp_path_factory.mktemp("drive")
    p = pictures
    _save(root / "images/a.png", p["retina"])
    _save(root / "images/b.tif", p["retina"])
    _save(root / "images/c.gif", p["camera"])
    _save(root / "images/d.jpg", p["retina"], quality=95)
    _save(root / "masks/a.png", p["vessels"])
    _save(root / "masks/b.tif", p["vessels"])
    _save(root / "masks/c.gif", p["three"] > 0)  # mode "1" mask
    _save(root / "masks/d.gif", p["vessels"])
    for stem in "abcd":
        _save(root / f"fov/{stem}_mask.gif", p["fov"])
    (root / "images/notes.txt").write_text("ignored: not an image")
    return root


def _digest(root):
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(pathlib.Path(root).rglob("*")) if f.is_file()}


def test_stem_pairing_all_formats(drive, pictures):
    before = _digest(drive)
    out = load_image_folder(drive / "images", drive / "masks", fov_dir=drive / "fov", fov_suffix="_mask")
    assert out["names"] == ["a.png", "b.tif", "c.gif", "d.jpg"]
    image, label, fov = out["image"], out["label"], out["fov"]
    assert image.shape == (4, S, S, 3) and image.dtype == np.float32  # one colour picture -> all RGB
    assert 0.0 <= image.min() and image.max() <= 1.0
    retina = pictures["retina"] / np.float32(255)
    np.testing.assert_array_equal(image[0], retina)  # PNG and TIFF are lossless
    np.testing.assert_array_equal(image[1], retina)
    for c in range(3):  # grey GIF, repeated into the three channels
        np.testing.assert_array_equal(image[2, ..., c], pictures["camera"] / np.float32(255))
    assert np.abs(image[3] - retina).mean() < 0.02 and np.abs(image[3] - retina).max() < 0.35  # JPEG q95
    assert float(image[0, 32, 32, 0]) == pictures["retina"][32, 32, 0] / np.float32(255)
    assert pictures["retina"][32, 32].tolist() == [185, 44, 21] and pictures["camera"][10, 50] == 204
    assert label.shape == (4, S, S) and label.dtype == np.int32 and set(np.unique(label)) == {0, 1}
    vessels = (pictures["vessels"] > 0).astype(np.int32)
    for i in (0, 1, 3):
        np.testing.assert_array_equal(label[i], vessels)
    np.testing.assert_array_equal(label[2], (pictures["three"] > 0).astype(np.int32))
    assert int(vessels.sum()) == int(label[0].sum()) > 0
    assert fov.shape == (4, S, S) and fov.dtype == np.bool_
    np.testing.assert_array_equal(fov[0], pictures["fov"] > 0)
    assert int(fov[0].sum()) == 2828  # pi * 30^2 = 2827.4
    assert _digest(drive) == before  # nothing on disk changed


def test_grey_folders_stay_one_channel_unless_asked(tmp_path, pictures):
    cam = pictures["camera"]
    for ext in ("png", "tif", "gif"):
        _save(tmp_path / f"g/{ext}.{ext}", cam)
    _save(tmp_path / "g/x.jpeg", cam, quality=95)
    _save(tmp_path / "g/y.png", np.stack([cam] * 3, -1))  # RGB file with grey content counts as grey
    out = load_image_folder(tmp_path / "g")
    assert set(out) == {"image", "names"} and out["image"].shape == (5, S, S, 1)
    assert out["names"] == ["gif.gif", "png.png", "tif.tif", "x.jpeg", "y.png"]
    for i in (0, 1, 2, 4):
        np.testing.assert_array_equal(out["image"][i, ..., 0], cam / np.float32(255))
    assert np.abs(out["image"][3, ..., 0] - cam / 255).mean() < 0.02
    rgb = load_image_folder(tmp_path / "g", color="rgb")["image"]
    assert rgb.shape == (5, S, S, 3) and (rgb[..., 0] == rgb[..., 2]).all()


def test_gray_of_a_colour_image_is_luma(tmp_path, pictures):
    _save(tmp_path / "c/r.png", pictures["retina"])
    grey = load_image_folder(tmp_path / "c", color="gray")["image"]
    expect = np.asarray(Image.fromarray(pictures["retina"]).convert("L"), np.float32) / 255
    assert grey.shape == (1, S, S, 1) and np.abs(grey[0, ..., 0] - expect).max() <= 1 / 255 + 1e-6


def test_sixteen_bit_images_scale_by_65535(tmp_path, pictures):
    wide = pictures["camera"].astype(np.uint16) * 257
    _save(tmp_path / "w/a.png", wide)
    _save(tmp_path / "w/b.tif", wide)
    image = load_image_folder(tmp_path / "w")["image"]
    np.testing.assert_allclose(image[..., 0], np.stack([pictures["camera"] / 255] * 2), atol=1e-6)


def test_masks_beside_images_with_a_suffix(tmp_path, pictures):
    _save(tmp_path / "case1.png", pictures["retina"])
    _save(tmp_path / "case1_mask.png", pictures["vessels"])
    _save(tmp_path / "case2.jpg", pictures["retina"])
    _save(tmp_path / "case2_mask.gif", pictures["vessels"])
    out = load_image_folder(tmp_path, tmp_path, mask_suffix="_mask")
    assert out["names"] == ["case1.png", "case2.jpg"] and out["label"].shape == (2, S, S)
    assert [p.mask.rsplit("/", 1)[-1] for p in find_pairs(tmp_path, tmp_path, mask_suffix="_mask")] == [
        "case1_mask.png", "case2_mask.gif"]
    with pytest.raises(MedjaxError, match="share the folder .* same suffix ''"):
        load_image_folder(tmp_path, tmp_path)


def test_csv_pairs_drive_style_names(drive, pictures):
    csv = drive / "pairs.csv"
    csv.write_text("image,mask,fov\nimages/d.jpg,masks/d.gif,fov/d_mask.gif\n\n"
                   f"{drive / 'images/a.png'},masks/a.png,fov/a_mask.gif\n")
    try:
        out = load_image_folder(pairs_csv=csv)
        assert out["names"] == ["images/d.jpg", str(drive / "images/a.png")]  # CSV order, cells as written
        assert out["image"].shape == (2, S, S, 3) and out["fov"].shape == (2, S, S)
        np.testing.assert_array_equal(out["label"][1], pictures["vessels"] > 0)
        csv.write_text("image,mask\nimages/c.gif,masks/c.gif\n")
        out = load_image_folder(pairs_csv=csv)
        assert set(out) == {"image", "label", "names"} and out["image"].shape == (1, S, S, 1)
    finally:
        csv.unlink()


def test_case_pattern_pairs_drive_names_and_stare_netpbm(tmp_path, pictures):
    """DRIVE's files share only their leading number (21_training.tif, 21_manual1.gif, 21_training_mask.gif);
    STARE's are Netpbm with the annotator in the mask name (im0001.ppm, im0001.ah.ppm)."""
    for n in ("21", "22"):
        _save(tmp_path / f"training/images/{n}_training.tif", pictures["retina"])
        _save(tmp_path / f"training/1st_manual/{n}_manual1.gif", pictures["vessels"])
        _save(tmp_path / f"training/mask/{n}_training_mask.gif", pictures["fov"])
    d = tmp_path / "training"
    pairs = find_pairs(d / "images", d / "1st_manual", fov_dir=d / "mask", case_pattern="[0-9]+")
    assert [(p.case, p.name, os.path.basename(p.mask), os.path.basename(p.fov)) for p in pairs] == [
        ("21", "21_training.tif", "21_manual1.gif", "21_training_mask.gif"),
        ("22", "22_training.tif", "22_manual1.gif", "22_training_mask.gif")]
    out = load_image_folder(d / "images", d / "1st_manual", fov_dir=d / "mask", case_pattern="[0-9]+")
    np.testing.assert_array_equal(out["label"][1], pictures["vessels"] > 0)
    with pytest.raises(MedjaxError, match=r"image\(s\) without a mask in .*1st_manual"):
        find_pairs(d / "images", d / "1st_manual")  # by whole stems nothing pairs
    with pytest.raises(MedjaxError, match=r"21_training.tif in .*images: case_pattern 'x\[0-9\]' matches nothing at "
                                          r"the start of '21_training'"):
        find_pairs(d / "images", d / "1st_manual", case_pattern="x[0-9]")
    with pytest.raises(MedjaxError, match=r"case_pattern '\[0-9' is not a regular expression"):
        find_pairs(d / "images", case_pattern="[0-9")
    for stem in ("im0001", "im0002"):
        _save(tmp_path / f"stare-images/{stem}.ppm", pictures["retina"])
        _save(tmp_path / f"labels-ah/{stem}.ah.ppm", np.stack([pictures["vessels"]] * 3, -1))
    out = load_image_folder(tmp_path / "stare-images", tmp_path / "labels-ah", mask_suffix=".ah")
    assert out["names"] == ["im0001.ppm", "im0002.ppm"] and out["image"].shape == (2, S, S, 3)
    np.testing.assert_array_equal(out["image"][0], pictures["retina"] / np.float32(255))
    np.testing.assert_array_equal(out["label"][0], pictures["vessels"] > 0)
    _save(tmp_path / "pgm/a.pgm", pictures["camera"])
    np.testing.assert_array_equal(load_image_folder(tmp_path / "pgm")["image"][0, ..., 0],
                                  pictures["camera"] / np.float32(255))


def test_pairs_from_several_folders_load_as_one_dataset(tmp_path, pictures):
    from medjax.data.image_folder import load_pairs

    _save(tmp_path / "a/images/x.png", pictures["camera"])
    _save(tmp_path / "a/masks/x.png", pictures["vessels"])
    _save(tmp_path / "b/images/y.png", pictures["retina"])
    _save(tmp_path / "b/masks/y.png", pictures["vessels"])
    _save(tmp_path / "b/fov/y.png", pictures["fov"])
    a = find_pairs(tmp_path / "a/images", tmp_path / "a/masks")
    b = find_pairs(tmp_path / "b/images", tmp_path / "b/masks")
    out = load_pairs(a + b)
    assert out["names"] == ["x.png", "y.png"] and out["image"].shape == (2, S, S, 3)  # one channel count for all
    np.testing.assert_array_equal(out["image"][0, ..., 2], pictures["camera"] / np.float32(255))
    b = find_pairs(tmp_path / "b/images", tmp_path / "b/masks", fov_dir=tmp_path / "b/fov")
    with pytest.raises(MedjaxError, match=r"image .*a/images/x.png has no FOV mask but .*b/images/y.png has one"):
        load_pairs(a + b)


def test_mask_values_and_palettes(tmp_path, pictures):
    three = pictures["three"]
    expected = np.select([three == 128, three == 255], [1, 2], 0)
    _save(tmp_path / "img/a.png", pictures["camera"])
    _save(tmp_path / "img/b.png", pictures["camera"])
    _save(tmp_path / "m/a.png", three)
    _save(tmp_path / "m/b.gif", three)  # GIF stores grey as a palette: grey values, not indices, are read
    out = load_image_folder(tmp_path / "img", tmp_path / "m", mask_values={0: 0, 128: 1, 255: 2}, num_classes=3)
    np.testing.assert_array_equal(out["label"], np.stack([expected] * 2))
    with pytest.raises(MedjaxError, match=r"mask .*m/a.png has values \[0, 128, 255\]: 255 mixed"):
        load_image_folder(tmp_path / "img", tmp_path / "m")
    # A colour palette (VOC style): the indices are the classes.
    pal = Image.fromarray(expected.astype(np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    pal.save(tmp_path / "m/a.png")
    pal.save(tmp_path / "m/b.gif")
    out = load_image_folder(tmp_path / "img", tmp_path / "m", num_classes=3)
    np.testing.assert_array_equal(out["label"], np.stack([expected] * 2))
    with pytest.raises(MedjaxError, match=r"mask .*m/a.png gives classes \[2\] outside \[0, 2\)"):
        load_image_folder(tmp_path / "img", tmp_path / "m", num_classes=2)


def test_resize_bilinear_images_nearest_masks(drive, pictures):
    out = load_image_folder(drive / "images", drive / "masks", fov_dir=drive / "fov", fov_suffix="_mask",
                            size=(32, 48))
    assert out["image"].shape == (4, 32, 48, 3) and out["label"].shape == (4, 32, 48)
    assert out["fov"].shape == (4, 32, 48) and out["fov"].dtype == np.bool_
    assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0
    assert set(np.unique(out["label"])) == {0, 1}
    ref = np.asarray(Image.fromarray(pictures["retina"][..., 0]).resize((48, 32), Image.Resampling.BILINEAR))
    assert np.abs(out["image"][0, ..., 0] * 255 - ref).max() < 1.0  # Pillow's bilinear, in float


def test_odd_shape_needs_size(tmp_path, pictures):
    _save(tmp_path / "a.png", pictures["camera"])
    _save(tmp_path / "b.png", pictures["camera"][:40])
    with pytest.raises(MedjaxError, match=r"image .*b.png is 40x64 but .*a.png is 64x64; pass size"):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, size=(16, 16))["image"].shape == (2, 16, 16, 1)


def test_fov_weights():
    fov = np.array([[[True, False]]])
    w = fov_weights(fov)
    assert w.dtype == np.float32 and w.tolist() == [[[1.0, 0.0]]]
    assert fov_weights(np.array([0, 1], np.uint8)).tolist() == [0.0, 1.0]
    with pytest.raises(MedjaxError, match=r"found values \[255\]"):
        fov_weights(np.array([0, 255]))


# ---- errors: each names the file (or folder) at fault --------------------------------------------------------


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(MedjaxError, match=r"image folder not found: .*nope"):
        load_image_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/readme.txt").write_text("x")
    with pytest.raises(MedjaxError, match=r"no images in .*empty \(looked for .png, .tif"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(MedjaxError, match="needs images_dir or pairs_csv"):
        load_image_folder()


def test_unpaired_files(tmp_path, pictures):
    for stem in ("a", "b"):
        _save(tmp_path / f"i/{stem}.png", pictures["camera"])
    _save(tmp_path / "m/a.png", pictures["vessels"])
    with pytest.raises(MedjaxError, match=r"image\(s\) without a mask in .*m .*: b.png"):
        load_image_folder(tmp_path / "i", tmp_path / "m")
    _save(tmp_path / "m/b.png", pictures["vessels"])
    _save(tmp_path / "m/zz.png", pictures["vessels"])
    with pytest.raises(MedjaxError, match=r"mask file\(s\) in .*m without an image in .*i: zz.png"):
        load_image_folder(tmp_path / "i", tmp_path / "m")
    with pytest.raises(MedjaxError, match=r"mask file\(s\) without an image in .*m: a.png, b.png, zz.png "
                                          r"\(expected names <image stem>_gt.<ext>\)"):
        load_image_folder(tmp_path / "i", tmp_path / "m", mask_suffix="_gt")
    _save(tmp_path / "i/a.jpg", pictures["camera"])
    with pytest.raises(MedjaxError, match=r"two image files for 'a' in .*i: a.jpg and a.png"):
        load_image_folder(tmp_path / "i")


def test_unreadable_and_truncated_files(tmp_path, pictures):
    _save(tmp_path / "ok/a.png", pictures["retina"])
    for ext in ("png", "tif", "gif", "jpg"):
        good = _save(tmp_path / f"src/x.{ext}", pictures["retina"]).read_bytes()
        folder = tmp_path / f"trunc_{ext}"
        folder.mkdir()
        (folder / f"b.{ext}").write_bytes(good[: len(good) // 2])
        (folder / "a.png").write_bytes((tmp_path / "ok/a.png").read_bytes())
        with pytest.raises(MedjaxError, match=rf"cannot read image .*trunc_{ext}/b.{ext} \(unreadable, truncated"):
            load_image_folder(folder)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk/c.png").write_text("not a png")
    with pytest.raises(MedjaxError, match=r"cannot read image .*junk/c.png"):
        load_image_folder(tmp_path / "junk")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks/a.gif").write_bytes(b"GIF89a")
    with pytest.raises(MedjaxError, match=r"cannot read mask .*masks/a.gif"):
        load_image_folder(tmp_path / "ok", tmp_path / "masks")
    frames = [Image.fromarray(pictures["camera"]), Image.fromarray(pictures["camera"][::-1])]
    (tmp_path / "stack").mkdir()
    frames[0].save(tmp_path / "stack/s.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(MedjaxError, match=r"image .*stack/s.tif is a 2-page TIFF stack"):
        load_image_folder(tmp_path / "stack")


def test_csv_errors(drive):
    bad = drive.parent / "bad_csv"
    bad.mkdir(exist_ok=True)
    csv = bad / "pairs.csv"
    csv.write_text("img,mask\nx.png,y.png\n")
    with pytest.raises(MedjaxError, match=r"pairs CSV .*pairs.csv has no 'image' column \(header: \['img', 'mask'\]"):
        load_image_folder(pairs_csv=csv)
    csv.write_text("image\nx.png\n")
    with pytest.raises(MedjaxError, match=r"pairs.csv has no 'mask' column"):
        load_image_folder(pairs_csv=csv)
    csv.write_text(f"image,mask\n{drive}/images/a.png,{drive}/masks/a.png\n{drive}/images/b.tif,missing.png\n")
    with pytest.raises(MedjaxError, match=r"pairs.csv line 3: mask file not found: .*bad_csv/missing.png"):
        load_image_folder(pairs_csv=csv)
    csv.write_text(f"image,mask\n{drive}/images/a.png,\n")
    with pytest.raises(MedjaxError, match=r"pairs.csv line 2: empty 'mask' cell"):
        load_image_folder(pairs_csv=csv)
    csv.write_text("image,mask\n")
    with pytest.raises(MedjaxError, match=r"pairs.csv lists no images"):
        load_image_folder(pairs_csv=csv)
    with pytest.raises(MedjaxError, match=r"pairs CSV not found: .*nope.csv"):
        load_image_folder(pairs_csv=bad / "nope.csv")
    with pytest.raises(MedjaxError, match="either pairs_csv or images_dir"):
        load_image_folder(drive / "images", pairs_csv=csv)


def test_unexpected_mask_values_name_the_file(tmp_path, pictures):
    _save(tmp_path / "i/a.png", pictures["retina"])
    _save(tmp_path / "i/b.png", pictures["retina"])
    _save(tmp_path / "m/a.png", pictures["vessels"])
    _save(tmp_path / "m/b.jpg", pictures["vessels"], quality=75)  # lossy: blurred 0/255 edges
    with pytest.raises(MedjaxError, match=r"mask .*m/b.jpg has values \[0, 1, .*255 mixed with other non-zero"):
        load_image_folder(tmp_path / "i", tmp_path / "m")
    with pytest.raises(MedjaxError, match=r"mask .*m/b.jpg has values \[1, 2, .* not in mask_values \(keys \[0, 255\]"):
        load_image_folder(tmp_path / "i", tmp_path / "m", mask_values={0: 0, 255: 1})
    (tmp_path / "m/b.jpg").unlink()
    _save(tmp_path / "m/b.png", (pictures["three"] > 0).astype(np.uint8) * 2)
    with pytest.raises(MedjaxError, match=r"masks mix binary 0/255 files \(.*m/a.png\) with class-index files "
                                          r"\(.*m/b.png: values \[0, 2\]\)"):
        load_image_folder(tmp_path / "i", tmp_path / "m")
    colour = np.zeros((S, S, 3), np.uint8)
    colour[:10, :10] = (255, 0, 0)
    _save(tmp_path / "m/b.png", colour)
    with pytest.raises(MedjaxError, match=r"mask .*m/b.png is a colour image \(e.g. RGB \[\[255, 0, 0\]\]\)"):
        load_image_folder(tmp_path / "i", tmp_path / "m")
    _save(tmp_path / "m/b.png", pictures["vessels"][:32])
    with pytest.raises(MedjaxError, match=r"mask .*m/b.png is 32x64 but its image .*i/b.png is 64x64"):
        load_image_folder(tmp_path / "i", tmp_path / "m")


def test_bad_fov_masks(tmp_path, pictures):
    _save(tmp_path / "i/a.png", pictures["retina"])
    _save(tmp_path / "f/a.png", pictures["three"])
    with pytest.raises(MedjaxError, match=r"FOV mask .*f/a.png has values \[0, 128, 255\]; expected 0 outside"):
        load_image_folder(tmp_path / "i", fov_dir=tmp_path / "f")
    _save(tmp_path / "f/a.png", np.zeros((S, S), np.uint8))
    with pytest.raises(MedjaxError, match=r"FOV mask .*f/a.png is all zero"):
        load_image_folder(tmp_path / "i", fov_dir=tmp_path / "f")
    _save(tmp_path / "f/a.png", pictures["fov"][:, :20])
    with pytest.raises(MedjaxError, match=r"FOV mask .*f/a.png is 64x20 but its image .*i/a.png is 64x64"):
        load_image_folder(tmp_path / "i", fov_dir=tmp_path / "f")
    with pytest.raises(MedjaxError, match=r"image\(s\) without a FOV mask in .*nofov"):
        (tmp_path / "nofov").mkdir()
        load_image_folder(tmp_path / "i", fov_dir=tmp_path / "nofov")


@pytest.mark.parametrize("kwargs, match", [
    ({"color": "bgr"}, "color must be 'auto', 'gray' or 'rgb'"),
    ({"size": (32,)}, r"size must be \(H, W\)"),
    ({"size": (0, 8)}, r"size must be \(H, W\)"),
    ({"mask_values": {"a": 1}}, "mask_values must map stored integer values"),
])
def test_bad_arguments(drive, kwargs, match):
    with pytest.raises(MedjaxError, match=match):
        load_image_folder(drive / "images", **kwargs)


def _png16(path, pixels, interlace=0):
    """A 16-bit RGB (or RGBA) PNG written by hand, cycling through all five row filters (PNG spec section 9), so
    the reader's unfiltering meets each one; `pixels` is (H, W, 3 or 4) uint16."""
    import struct
    import zlib

    h, w, c = pixels.shape
    bpp = 2 * c
    raw = pixels.astype(">u2").view(np.uint8).reshape(h, w * bpp).astype(np.int64)
    rows, prev = [], np.zeros(w * bpp, np.int64)
    for r in range(h):
        cur = raw[r]
        left = np.concatenate([np.zeros(bpp, np.int64), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        p = left + prev - upleft
        pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - upleft)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        kind = r % 5
        filtered = cur - [0, left, prev, (left + prev) // 2, paeth][kind]
        rows.append(bytes([kind]) + (filtered % 256).astype(np.uint8).tobytes())
        prev = cur

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, 16, 2 if c == 3 else 6, 0, 0, interlace)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
                     + chunk(b"IEND", b""))
    return path


def test_sixteen_bit_rgb_png_keeps_its_low_byte(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 65536, (11, 7, 3)).astype(np.uint16)
    rgb[0, 0], rgb[0, 1] = (0x0102, 0x0103, 0x01FF), (0x01FF, 0x0100, 0x0101)  # equal high bytes: 8 bits would merge
    rgba = np.concatenate([rgb, np.full((11, 7, 1), 40000, np.uint16)], axis=-1)
    _png16(tmp_path / "images/a.png", rgb)
    _png16(tmp_path / "images/b.png", rgba)  # alpha is dropped, as for 8-bit images
    out = load_image_folder(tmp_path / "images")
    assert out["image"].shape == (2, 11, 7, 3)
    np.testing.assert_array_equal(out["image"][0], rgb.astype(np.float32) / 65535.0)
    np.testing.assert_array_equal(out["image"][1], out["image"][0])
    assert out["image"][0, 0, 0].tolist() == [np.float32(258 / 65535), np.float32(259 / 65535), np.float32(511 / 65535)]
    assert np.asarray(Image.open(tmp_path / "images/a.png"))[0, 0].tolist() == [1, 1, 1]  # what Pillow would give


def test_png_unfiltering_matches_pillow_on_a_real_photo(tmp_path, pictures):
    """Pillow (zlib + adaptive filters) writes the fundus photo; medjax's unfiltering of its rows gives Pillow's
    decoded pixels exactly."""
    from medjax.data.image_folder import _png_chunks, _unfilter

    path = _save(tmp_path / "retina.png", pictures["retina"])
    header, idat = _png_chunks(path.read_bytes())
    rows = np.frombuffer(__import__("zlib").decompress(idat), np.uint8).reshape(S, 1 + S * 3)
    assert set(np.unique(rows[:, 0]).tolist()) >= {1, 2, 4}  # Sub, Up and Paeth rows (Average: the test above)
    np.testing.assert_array_equal(_unfilter(rows[:, 0], rows[:, 1:], 3).reshape(S, S, 3), pictures["retina"])


def test_sixteen_bit_colour_pngs_refused_by_name(tmp_path):
    rgb = np.full((4, 5, 3), 300, np.uint16)
    _png16(tmp_path / "a/images/x.png", rgb, interlace=1)
    with pytest.raises(MedjaxError, match=r"image .*x.png is an interlaced 16-bit colour PNG"):
        load_image_folder(tmp_path / "a/images")
    _png16(tmp_path / "b/images/x.png", rgb)
    _png16(tmp_path / "b/masks/x.png", rgb)
    with pytest.raises(MedjaxError, match=r"mask .*masks/x.png is a 16-bit colour PNG; save class values as a grey"):
        load_image_folder(tmp_path / "b/images", tmp_path / "b/masks")
    data = bytearray(_png16(tmp_path / "c/images/x.png", rgb).read_bytes())
    data[45] ^= 0xFF  # a flipped byte inside the IDAT chunk's data
    (tmp_path / "c/images/x.png").write_bytes(bytes(data))
    with pytest.raises(MedjaxError, match=r"cannot read image .*x.png \(unreadable, truncated or not an image\): "
                                          r"chunk IDAT fails its CRC check"):
        load_image_folder(tmp_path / "c/images")
