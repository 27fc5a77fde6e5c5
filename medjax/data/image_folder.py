"""2D images with optional segmentation masks and field-of-view (FOV) masks, from folders or a CSV of pairs.

Formats: PNG, TIFF (.tif/.tiff, single page), GIF (first frame), JPEG (.jpg/.jpeg), Netpbm (.ppm/.pgm, STARE),
read with Pillow; extensions are matched case-insensitively, hidden files and other extensions are ignored. Files are
only read.

Pairing
    by case id: ``images/case1.png`` <-> ``masks/case1{mask_suffix}.<any supported ext>`` (and
    ``fov/case1{fov_suffix}.*``): a file's case id is its stem without its role's suffix, cut to what
    ``case_pattern`` (a regular expression) matches at its start when given, so files named differently pair
    (DRIVE: ``case_pattern="[0-9]+"`` pairs 21_training.tif, 21_manual1.gif and 21_training_mask.gif as case 21).
    Masks may live in the images folder when ``mask_suffix`` tells them apart.
    Every image needs a mask (and FOV) and every mask an image; the first offenders are named.
    by CSV: columns ``image,mask[,fov][,split]``, paths relative to the CSV's folder (absolute paths are kept); the
    case id is the image file's stem (cut by ``case_pattern``); the optional ``split`` column (train / val / test)
    is the split the row belongs to (``medjax.data.splits``).
    Examples are ordered by image file name (folders) or by CSV row.

Images -> float32 in [0, 1], (N, H, W, C)
    8-bit / 255, 16-bit / 65535 (float TIFFs must already be in [0, 1]); alpha is dropped; palettes are expanded.
    16-bit colour PNGs are decoded by medjax itself (zlib + the PNG filters) at full depth, since Pillow would
    reduce them to 8 bits; an interlaced one is refused by name, as is a 16-bit colour PNG mask.
    ``color="auto"`` gives C=1 if every image is grey (grey mode, or R == G == B everywhere), else C=3 with grey
    images repeated; ``"gray"`` forces C=1 (ITU-R 601 luma for colour); ``"rgb"`` forces C=3.
    EXIF orientation is ignored (pixels as stored), so an image stays aligned with its mask.

Masks -> int32 class indices, (N, H, W)
    A mask holds grey values or palette indices (a palette whose used entries are all grey counts as grey values,
    since GIF stores grey images as palettes); an RGB mask is accepted only if R == G == B.
    ``mask_values`` maps stored values to classes (e.g. {0: 0, 128: 1, 255: 2}); any other value is an error.
    Without it, binary masks (only 0 and 255) become {0, 1} and other masks are taken as class indices as stored;
    a mask mixing 255 with other non-zero values (a lossy JPEG mask, an antialiased resize) or a dataset mixing
    0/255 masks with index masks is an error naming the file and its values. ``num_classes`` adds a range check.

FOV masks -> bool (N, H, W): 0 outside, one non-zero value inside (e.g. DRIVE's 0/255 ``*_mask.gif``).
    Pass ``fov_weights(fov)`` as the per-pixel weight map of losses/metrics so pixels outside the FOV (the black
    border of a fundus photo) count for nothing instead of inflating accuracy and Dice.

``size=(H, W)`` resizes with Pillow (bilinear, antialiased when shrinking, for images; nearest for masks and FOV);
without it every image must have the first image's H x W. Masks/FOV must match their image's size before resizing.
"""

from __future__ import annotations

import csv
import os
import re
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image

from medjax.data.splits import SPLITS
from medjax.errors import MedjaxError

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".gif", ".jpg", ".jpeg", ".ppm", ".pgm")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error,
                  zlib.error, Image.DecompressionBombError)


class ImagePair(NamedTuple):
    """One example's files: `name` is the image file name (folders) or the CSV's image cell; `case` its case id
    (what split files name); `split` the CSV row's split column, if the CSV has one."""

    name: str
    image: str
    mask: str | None
    fov: str | None
    case: str
    split: str | None = None


def _some(items: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(items[:k])
    return shown + (f" and {len(items) - k} more" if len(items) > k else "")


def _supported(folder: str, what: str) -> list[str]:
    if not os.path.isdir(folder):
        raise MedjaxError(f"{what} folder not found: {folder}")
    names = sorted(f for f in os.listdir(folder) if not f.startswith(".")
                   and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS and os.path.isfile(os.path.join(folder, f)))
    return names


def _case_pattern(case_pattern: str) -> re.Pattern | None:
    if not case_pattern:
        return None
    try:
        return re.compile(case_pattern)
    except re.error as e:
        raise MedjaxError(f"case_pattern {case_pattern!r} is not a regular expression: {e}") from e


def _case(key: str, pattern: re.Pattern | None, fname: str, folder: str) -> str:
    """The case id of a file whose stem (less its role's suffix) is `key`."""
    if pattern is None:
        return key
    found = pattern.match(key)
    if not found or not found.group(0):
        raise MedjaxError(f"{fname} in {folder}: case_pattern {pattern.pattern!r} matches nothing at the start of "
                          f"{key!r}")
    return found.group(0)


def _pairs_from_folders(images_dir: str, masks_dir: str | None, fov_dir: str | None, mask_suffix: str,
                        fov_suffix: str, case_pattern: str) -> list[ImagePair]:
    roles = [("image", images_dir, "")]
    if masks_dir is not None:
        roles.append(("mask", masks_dir, mask_suffix))
    if fov_dir is not None:
        roles.append(("FOV mask", fov_dir, fov_suffix))
    pattern = _case_pattern(case_pattern)
    groups: dict[str, list[tuple[str, str, str]]] = {}
    for role in roles:
        groups.setdefault(os.path.realpath(role[1]), []).append(role)
    by_role: dict[str, dict[str, str]] = {r[0]: {} for r in roles}
    for group in groups.values():
        suffixes = [r[2] for r in group]
        if len(set(suffixes)) < len(suffixes):
            raise MedjaxError(f"{' and '.join(r[0] + 's' for r in group)} share the folder {group[0][1]} with the "
                              f"same suffix {suffixes[0]!r}: set mask_suffix/fov_suffix to tell them apart")
        folder = group[0][1]
        unmatched = []
        for fname in _supported(folder, group[0][0]):
            stem = os.path.splitext(fname)[0]
            # The longest suffix that fits decides the role ("_fov_mask" beats "_mask"; "" takes the rest).
            fits = [r for r in group if stem.endswith(r[2])]
            if not fits:
                unmatched.append(fname)
                continue
            role, _, suffix = max(fits, key=lambda r: len(r[2]))
            key = _case(stem[: len(stem) - len(suffix)], pattern, fname, folder)
            seen = by_role[role].get(key)
            if seen is not None:
                raise MedjaxError(f"two {role} files for '{key}' in {folder}: {os.path.basename(seen)} and {fname}")
            by_role[role][key] = os.path.join(folder, fname)
        if unmatched:
            role, _, suffix = group[0]
            raise MedjaxError(f"{role} file(s) without an image in {folder}: {_some(unmatched)} (expected names "
                              f"<image stem>{suffix}.<ext>)")
    images = by_role["image"]
    if not images:
        raise MedjaxError(f"no images in {images_dir} (looked for {', '.join(IMAGE_EXTENSIONS)} files)")
    for role, folder, suffix in roles[1:]:
        found = by_role[role]
        lacking = sorted(os.path.basename(images[k]) for k in images if k not in found)
        if lacking:
            raise MedjaxError(f"image(s) without a {role} in {folder} (looked for <stem>{suffix}.<ext>): "
                              f"{_some(lacking)}")
        orphans = sorted(os.path.basename(found[k]) for k in found if k not in images)
        if orphans:
            raise MedjaxError(f"{role} file(s) in {folder} without an image in {images_dir}: {_some(orphans)}")
    masks, fovs = by_role.get("mask", {}), by_role.get("FOV mask", {})
    return [ImagePair(os.path.basename(images[k]), images[k], masks.get(k), fovs.get(k), k)
            for k in sorted(images, key=lambda k: os.path.basename(images[k]))]


def _pairs_from_csv(pairs_csv: str, case_pattern: str) -> list[ImagePair]:
    if not os.path.isfile(pairs_csv):
        raise MedjaxError(f"pairs CSV not found: {pairs_csv}")
    base = os.path.dirname(os.path.abspath(pairs_csv))
    try:
        with open(pairs_csv, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise MedjaxError(f"cannot read pairs CSV {pairs_csv}: {e}") from e
    if not rows:
        raise MedjaxError(f"pairs CSV {pairs_csv} is empty (expected a header image,mask[,fov])")
    header = [h.strip().lower() for h in rows[0]]
    for column in ("image", "mask"):
        if column not in header:
            raise MedjaxError(f"pairs CSV {pairs_csv} has no '{column}' column (header: {rows[0]}); "
                              f"expected image,mask[,fov]")
    cols = {c: header.index(c) for c in ("image", "mask", "fov") if c in header}
    split_col = header.index("split") if "split" in header else None
    pattern = _case_pattern(case_pattern)
    pairs, seen = [], {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        paths = {}
        for column, i in cols.items():
            cell = row[i].strip() if i < len(row) else ""
            if not cell:
                raise MedjaxError(f"pairs CSV {pairs_csv} line {line}: empty '{column}' cell")
            path = os.path.join(base, cell)
            if not os.path.isfile(path):
                raise MedjaxError(f"pairs CSV {pairs_csv} line {line}: {column} file not found: {path}")
            paths[column] = (cell, path)
        name = paths["image"][0]
        if name in seen:
            raise MedjaxError(f"pairs CSV {pairs_csv} line {line}: image {name} already listed on line {seen[name]}")
        seen[name] = line
        split = None
        if split_col is not None:
            split = (row[split_col] if split_col < len(row) else "").strip().lower()
            if split not in SPLITS:
                cell = row[split_col].strip() if split_col < len(row) else ""
                raise MedjaxError(f"pairs CSV {pairs_csv} line {line}: split {cell!r} is not one of "
                                  f"{'/'.join(SPLITS)}")
        stem = os.path.splitext(os.path.basename(name))[0]
        pairs.append(ImagePair(name, paths["image"][1], paths["mask"][1], paths["fov"][1] if "fov" in paths else None,
                               _case(stem, pattern, name, pairs_csv), split))
    if not pairs:
        raise MedjaxError(f"pairs CSV {pairs_csv} lists no images")
    return pairs


def find_pairs(images_dir: str | os.PathLike | None = None, masks_dir: str | os.PathLike | None = None, *,
               pairs_csv: str | os.PathLike | None = None, fov_dir: str | os.PathLike | None = None,
               mask_suffix: str = "", fov_suffix: str = "", case_pattern: str = "") -> list[ImagePair]:
    """The example files `load_image_folder` reads, without decoding pixels (e.g. to fingerprint a cache)."""
    if pairs_csv is not None:
        if images_dir is not None or masks_dir is not None or fov_dir is not None:
            raise MedjaxError("give either pairs_csv or images_dir/masks_dir/fov_dir, not both "
                              f"(pairs_csv={os.fspath(pairs_csv)})")
        return _pairs_from_csv(os.fspath(pairs_csv), case_pattern)
    if images_dir is None:
        raise MedjaxError("load_image_folder needs images_dir or pairs_csv")
    return _pairs_from_folders(os.fspath(images_dir), None if masks_dir is None else os.fspath(masks_dir),
                               None if fov_dir is None else os.fspath(fov_dir), mask_suffix, fov_suffix, case_pattern)


def _decode(path: str, what: str, convert: Callable[[Image.Image, str], np.ndarray]) -> np.ndarray:
    """Open, fully decode (so truncation shows here) and convert one file; Pillow's errors name the file.
    16-bit colour PNGs, which Pillow reduces to 8 bits, are decoded here at full depth (``_png16_colour``)."""
    try:
        header = _png_header(path)
        if header is not None and header[2] == 16 and header[3] in PNG16_COLOUR_CHANNELS:
            if convert is not _image_array:
                raise MedjaxError(f"{what} {path} is a 16-bit colour PNG; save class values as a grey or palette "
                                  f"(indexed) image")
            if header[4]:
                raise MedjaxError(f"image {path} is an interlaced 16-bit colour PNG, which medjax does not decode "
                                  f"(Pillow would reduce it to 8 bits); save it non-interlaced or as a 16-bit TIFF")
            return _png16_colour(path)
        with Image.open(path) as im:
            if im.format == "TIFF" and getattr(im, "n_frames", 1) > 1:
                raise MedjaxError(f"{what} {path} is a {im.n_frames}-page TIFF stack; this reader takes 2D images")
            im.load()
            return convert(im, path)
    except MedjaxError:
        raise
    except _DECODE_ERRORS as e:
        raise MedjaxError(f"cannot read {what} {path} (unreadable, truncated or not an image): {e}") from e


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG16_COLOUR_CHANNELS = {2: 3, 6: 4}  # PNG colour type -> samples per pixel: RGB, RGBA


def _png_header(path: str) -> tuple[int, int, int, int, int] | None:
    """(width, height, bit depth, colour type, interlace) from a PNG's IHDR; None for any other file."""
    with open(path, "rb") as f:
        head = f.read(29)
    if len(head) < 29 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return width, height, depth, colour, interlace


def _png_chunks(data: bytes) -> tuple[tuple, bytes]:
    """(IHDR fields, the concatenated IDAT payload) of a PNG file's bytes; every chunk's CRC is checked."""
    pos, header, idat = 8, None, []
    while True:
        if pos + 8 > len(data):
            raise ValueError("the file ends before its IEND chunk")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body, crc = data[pos + 8:pos + 8 + length], data[pos + 8 + length:pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise ValueError(f"chunk {kind.decode('latin-1')} is cut short")
        if struct.unpack(">I", crc)[0] != zlib.crc32(kind + body):
            raise ValueError(f"chunk {kind.decode('latin-1')} fails its CRC check")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            return header, b"".join(idat)
        pos += 12 + length


def _unfilter(filters: np.ndarray, rows: np.ndarray, bpp: int) -> np.ndarray:
    """Undo PNG's per-row filters (None, Sub, Up, Average, Paeth; PNG spec section 9) on (H, W * bpp) bytes.

    Each byte depends on its left, upper and upper-left neighbours, so pixels are reconstructed one
    anti-diagonal at a time, all pixels of a diagonal (and all bytes of a pixel) at once: H + W - 1 numpy steps.
    """
    if filters.size and filters.max() > 4:
        raise ValueError(f"unknown PNG filter type {int(filters.max())}")
    h, n = rows.shape
    w = n // bpp
    x = rows.reshape(h, w, bpp).astype(np.int16)
    out = np.zeros((h + 1, w + 1, bpp), np.int16)  # row 0 / column 0: the zero bytes before the image
    kind = filters.astype(np.int16)
    for d in range(h + w - 1):
        r = np.arange(max(0, d - w + 1), min(d, h - 1) + 1)
        c = d - r
        a, b, ul = out[r + 1, c], out[r, c + 1], out[r, c]  # left, up, upper-left
        p = a + b - ul
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - ul)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, ul))
        t = kind[r][:, None]
        pred = np.select([t == 1, t == 2, t == 3, t == 4], [a, b, (a + b) >> 1, paeth], 0)
        out[r + 1, c + 1] = (x[r, c] + pred) & 255
    return out[1:, 1:].reshape(h, n).astype(np.uint8)


def _png16_colour(path: str) -> np.ndarray:
    """float32 (H, W, 3) in [0, 1] of a non-interlaced 16-bit RGB / RGBA PNG, at full depth (alpha dropped)."""
    with open(path, "rb") as f:
        header, idat = _png_chunks(f.read())
    width, height, _, colour, _, _, _ = header
    bpp = 2 * PNG16_COLOUR_CHANNELS[colour]
    raw = np.frombuffer(zlib.decompress(idat), np.uint8)
    if raw.size != height * (1 + width * bpp):
        raise ValueError(f"{raw.size} bytes of pixel data for a {width}x{height} image (expected "
                         f"{height * (1 + width * bpp)})")
    rows = raw.reshape(height, 1 + width * bpp)
    data = _unfilter(rows[:, 0], rows[:, 1:], bpp).reshape(height, width, bpp // 2, 2).astype(np.uint16)
    return ((data[..., 0] << 8) | data[..., 1])[..., :3].astype(np.float32) / 65535.0


def _image_array(im: Image.Image, path: str) -> np.ndarray:
    """float32 (H, W) grey or (H, W, 3) colour in [0, 1]."""
    mode = im.mode
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.float32) / 65535.0
    if mode == "I":
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise MedjaxError(f"image {path}: 32-bit integer pixels {a.min()}..{a.max()} do not fit 16 bits; "
                              f"save it as 8- or 16-bit")
        return a.astype(np.float32) / 65535.0
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        if a.size and not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
            raise MedjaxError(f"image {path}: float pixels must lie in [0, 1], found {np.nanmin(a)}..{np.nanmax(a)}")
        return a.copy()
    if mode in ("1", "L", "LA", "La"):
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    if mode in ("RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    raise MedjaxError(f"image {path}: unsupported pixel mode {mode!r}")


def _mask_array(im: Image.Image, path: str) -> np.ndarray:
    """int64 (H, W) stored values: grey levels, or palette indices for a colour palette."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=bool).astype(np.int64)
    if mode in ("L", "LA", "La"):
        return np.asarray(im.getchannel(0), dtype=np.int64)
    if mode.startswith("I;16") or mode == "I":
        return np.asarray(im).astype(np.int64)
    if mode in ("P", "PA"):
        idx = np.asarray(im.getchannel(0), dtype=np.int64) if mode == "PA" else np.asarray(im, dtype=np.int64)
        palette = im.getpalette("RGB")
        if palette:
            pal = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
            used = np.unique(idx)
            if used.max() < len(pal) and (pal[used] == pal[used, :1]).all():
                return pal[idx, 0]  # grey palette (how GIF stores grey images): the grey value is the label value
        return idx
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if not (np.isfinite(a).all() and (a == np.round(a)).all()):
            raise MedjaxError(f"mask {path}: float pixels that are not whole numbers; masks hold class values")
        return a.astype(np.int64)
    if mode in ("RGB", "RGBA", "RGBa", "RGBX"):
        a = np.asarray(im.convert("RGB"), dtype=np.int64)
        differ = (a[..., 0] != a[..., 1]) | (a[..., 1] != a[..., 2])
        if differ.any():
            colours = np.unique(a[differ], axis=0)[:5].tolist()
            raise MedjaxError(f"mask {path} is a colour image (e.g. RGB {colours}); save class values as a grey or "
                              f"palette (indexed) image")
        return a[..., 0]
    raise MedjaxError(f"mask {path}: unsupported pixel mode {mode!r}")


def _values(u: np.ndarray) -> str:
    return str(u[:12].tolist()) + (f" ... ({u.size} distinct)" if u.size > 12 else "")


def _resize(a: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """Resize a (H, W) or (H, W, C) array per channel, keeping its dtype's meaning (float for images, int labels)."""
    h, w = size
    if a.ndim == 3:
        return np.stack([_resize(a[..., c], size, resample) for c in range(a.shape[-1])], axis=-1)
    if a.dtype == np.float32:
        return np.clip(np.asarray(Image.fromarray(a).resize((w, h), resample), dtype=np.float32), 0.0, 1.0)
    return np.asarray(Image.fromarray(a.astype(np.int32)).resize((w, h), resample)).astype(a.dtype)


def _check_size_arg(size) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        h, w = (int(s) for s in size)
        ok = all(int(s) == s and s > 0 for s in size)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise MedjaxError(f"load_image_folder: size must be (H, W) positive integers or None, got {size!r}")
    return h, w


def _check_mask_values(mask_values) -> tuple[np.ndarray, np.ndarray] | None:
    if mask_values is None:
        return None
    try:
        items = sorted((int(k), int(v)) for k, v in dict(mask_values).items()
                       if int(k) == k and int(v) == v)
        valid = len(items) == len(dict(mask_values)) and len(items) > 0
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise MedjaxError(f"load_image_folder: mask_values must map stored integer values to integer classes, "
                          f"e.g. {{0: 0, 255: 1}}; got {mask_values!r}")
    return np.array([k for k, _ in items], np.int64), np.array([v for _, v in items], np.int64)


def load_image_folder(images_dir: str | os.PathLike | None = None, masks_dir: str | os.PathLike | None = None, *,
                      pairs_csv: str | os.PathLike | None = None, fov_dir: str | os.PathLike | None = None,
                      color: Literal["auto", "gray", "rgb"] = "auto", mask_values: Mapping[int, int] | None = None,
                      size: Sequence[int] | None = None, mask_suffix: str = "", fov_suffix: str = "",
                      num_classes: int | None = None, case_pattern: str = "") -> dict:
    """Read a folder (or CSV) of 2D images and masks into arrays; see the module docstring for every rule.

    Returns {"image": (N,H,W,C) float32 [0,1], "label": (N,H,W) int32 (if masks), "fov": (N,H,W) bool (if FOV
    masks), "names": list of N str}. Every problem with the data is a MedjaxError naming the file.
    """
    pairs = find_pairs(images_dir, masks_dir, pairs_csv=pairs_csv, fov_dir=fov_dir, mask_suffix=mask_suffix,
                       fov_suffix=fov_suffix, case_pattern=case_pattern)
    return load_pairs(pairs, color=color, mask_values=mask_values, size=size, num_classes=num_classes)


def load_pairs(pairs: Sequence[ImagePair], *, color: Literal["auto", "gray", "rgb"] = "auto",
               mask_values: Mapping[int, int] | None = None, size: Sequence[int] | None = None,
               num_classes: int | None = None) -> dict:
    """`load_image_folder` on pairs already found (e.g. gathered from several folders, one per split): one
    channel count, size check and mask mapping for all of them."""
    if color not in ("auto", "gray", "rgb"):
        raise MedjaxError(f"load_image_folder: color must be 'auto', 'gray' or 'rgb', got {color!r}")
    out_size = _check_size_arg(size)
    lut = _check_mask_values(mask_values)
    for role, what in (("mask", "mask"), ("fov", "FOV mask")):
        have = [p for p in pairs if getattr(p, role) is not None]
        if have and len(have) < len(pairs):
            lacking = next(p for p in pairs if getattr(p, role) is None)
            raise MedjaxError(f"image {lacking.image} has no {what} but {have[0].image} has one: give every image "
                              f"a {what}, or none")
    images, masks, mask_uniques, fovs = [], [], [], []
    first: tuple[tuple[int, int], str] | None = None
    for pair in pairs:
        image = _decode(pair.image, "image", _image_array)
        hw = image.shape[:2]
        if out_size is None:
            if first is None:
                first = (hw, pair.image)
            elif hw != first[0]:
                raise MedjaxError(f"image {pair.image} is {hw[0]}x{hw[1]} but {first[1]} is "
                                  f"{first[0][0]}x{first[0][1]}; pass size=(H, W) to resize all images")
        if pair.mask is not None:
            mask = _decode(pair.mask, "mask", _mask_array)
            if mask.shape != hw:
                raise MedjaxError(f"mask {pair.mask} is {mask.shape[0]}x{mask.shape[1]} but its image {pair.image} "
                                  f"is {hw[0]}x{hw[1]}")
            mask_uniques.append(np.unique(mask))  # checked on the stored mask, before any resize
            masks.append(mask if out_size is None else _resize(mask, out_size, Image.Resampling.NEAREST))
        if pair.fov is not None:
            fov = _decode(pair.fov, "FOV mask", _mask_array)
            if fov.shape != hw:
                raise MedjaxError(f"FOV mask {pair.fov} is {fov.shape[0]}x{fov.shape[1]} but its image "
                                  f"{pair.image} is {hw[0]}x{hw[1]}")
            u = np.unique(fov)
            if (u < 0).any() or (u > 0).sum() > 1:
                raise MedjaxError(f"FOV mask {pair.fov} has values {_values(u)}; expected 0 outside and one value "
                                  f"inside (e.g. 0/255)")
            if not (u > 0).any():
                raise MedjaxError(f"FOV mask {pair.fov} is all zero: no pixel of {pair.image} is inside its FOV")
            fov = (fov != 0).astype(np.uint8)
            fovs.append((fov if out_size is None else _resize(fov, out_size, Image.Resampling.NEAREST)) > 0)
        images.append(image if out_size is None else _resize(image, out_size, Image.Resampling.BILINEAR))

    out: dict = {"image": _stack_images(images, color), "names": [p.name for p in pairs]}
    if masks:
        out["label"] = _labels(masks, mask_uniques, [p.mask for p in pairs], lut, num_classes)
    if fovs:
        out["fov"] = np.stack(fovs)
    return out


def _is_grey(a: np.ndarray) -> bool:
    return a.ndim == 2 or bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())


def _stack_images(images: list[np.ndarray], color: str) -> np.ndarray:
    """One channel count for the whole dataset: the model's first layer is fixed."""
    channels = 1 if color == "gray" or (color == "auto" and all(_is_grey(a) for a in images)) else 3
    n = len(images)
    h, w = images[0].shape[:2]
    out = np.empty((n, h, w, channels), np.float32)
    for i, a in enumerate(images):
        if channels == 3:
            out[i] = a[..., None] if a.ndim == 2 else a
        elif a.ndim == 2:
            out[i, ..., 0] = a
        elif _is_grey(a):
            out[i, ..., 0] = a[..., 0]
        else:
            out[i, ..., 0] = np.clip(a @ np.asarray(_LUMA, np.float32), 0.0, 1.0)
    return out


def _labels(masks: list[np.ndarray], uniques: list[np.ndarray], paths: list[str],
            lut: tuple[np.ndarray, np.ndarray] | None, num_classes: int | None) -> np.ndarray:
    """Stored values -> class indices, checking every file's values before any is used."""
    if lut is not None:
        keys, classes = lut
        for u, path in zip(uniques, paths):
            unexpected = np.setdiff1d(u, keys)
            if unexpected.size:
                raise MedjaxError(f"mask {path} has values {_values(unexpected)} not in mask_values "
                                  f"(keys {keys.tolist()})")
        mapped = [classes[np.searchsorted(keys, m)] for m in masks]
        mapped_uniques = [classes[np.searchsorted(keys, u)] for u in uniques]
    else:
        binary, index = None, None
        for u, path in zip(uniques, paths):
            if (u < 0).any():
                raise MedjaxError(f"mask {path} has negative values {_values(u[u < 0])}")
            if 255 in u and np.setdiff1d(u, [0, 255]).size:
                raise MedjaxError(f"mask {path} has values {_values(u)}: 255 mixed with other non-zero values "
                                  f"(a lossy JPEG or resized mask?); a binary mask holds only 0 and 255, an index "
                                  f"mask class indices 0..K-1; pass mask_values to map stored values to classes")
            if 255 in u:
                binary = binary or path
            elif np.setdiff1d(u, [0, 1]).size:
                index = index or (path, u)
        if binary and index:
            raise MedjaxError(f"masks mix binary 0/255 files ({binary}) with class-index files ({index[0]}: values "
                              f"{_values(index[1])}); pass mask_values to say what each stored value means")
        mapped = [np.where(m == 255, 1, m) for m in masks] if binary else masks
        mapped_uniques = [np.where(u == 255, 1, u) for u in uniques] if binary else uniques
    if num_classes is not None:
        for u, path in zip(mapped_uniques, paths):
            bad = u[(u < 0) | (u >= num_classes)]
            if bad.size:
                raise MedjaxError(f"mask {path} gives classes {_values(np.unique(bad))} outside "
                                  f"[0, {num_classes})")
    return np.stack(mapped).astype(np.int32)


def fov_weights(fov: np.ndarray) -> np.ndarray:
    """float32 per-pixel weights, 1 inside the FOV and 0 outside: the weight map to give losses and metrics so
    pixels outside the field of view (e.g. a fundus photo's black border) count for nothing."""
    fov = np.asarray(fov)
    if fov.dtype != np.bool_:
        bad = np.setdiff1d(np.unique(fov), [0, 1])
        if bad.size:
            raise MedjaxError(f"fov_weights: an FOV mask is boolean or 0/1, found values {_values(bad)}")
    return fov.astype(np.float32)
