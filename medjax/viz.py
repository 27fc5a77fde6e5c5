"""PNG figures a person reads after a run: segmentation overlays and training curves.

Matplotlib's Agg backend only (no display needed); every file is written to a temporary file in the same folder and
moved into place with ``os.replace``, so a reader never sees a half-written PNG.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping, Sequence

import numpy as np

# Class 0 (background) is left transparent; classes 1.. use these colours in order, then cycle.
CLASS_COLOURS = (
    (0.0, 0.0, 0.0),  # background (not drawn)
    (0.12, 0.47, 0.71),  # blue
    (1.0, 0.5, 0.05),  # orange
    (0.17, 0.63, 0.17),  # green
    (0.84, 0.15, 0.16),  # red
    (0.58, 0.4, 0.74),  # purple
    (0.55, 0.34, 0.29),  # brown
    (0.89, 0.47, 0.76),  # pink
    (0.74, 0.74, 0.13),  # olive
    (0.09, 0.75, 0.81),  # cyan
)
OVERLAY_ALPHA = 0.45


def _figure(figsize, nrows=1, ncols=1, gridspec_kw=None, **kwargs):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, **kwargs)  # no pyplot: no global state, no display backend
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw=gridspec_kw)
    return fig, axes


def _save_atomic(fig, path: str, dpi: int) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # A per-writer name in the same folder (so os.replace is atomic); opened normally so the PNG gets umask perms.
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def class_colour(index: int) -> tuple[float, float, float]:
    """The fixed RGB colour of class `index` (index 0 is background and is never drawn)."""
    if index == 0:
        return CLASS_COLOURS[0]
    return CLASS_COLOURS[1 + (index - 1) % (len(CLASS_COLOURS) - 1)]


def _rgba_overlay(label: np.ndarray, num_classes: int) -> np.ndarray:
    table = np.zeros((max(num_classes, int(label.max(initial=0)) + 1), 4), np.float32)
    for c in range(1, len(table)):
        table[c, :3] = class_colour(c)
        table[c, 3] = OVERLAY_ALPHA
    return table[np.clip(label, 0, len(table) - 1)]


def _as_2d_image(x: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) -> grey (H, W); (H, W, 3) -> RGB; other channel counts show channel 0."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3 and x.shape[-1] != 3:
        x = x[..., 0]
    lo, hi = np.nanpercentile(x, 0.5), np.nanpercentile(x, 99.5)
    return np.clip((x - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(x)


def save_overlay_png(
    path: str,
    images: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    class_names: Sequence[str],
    max_rows: int = 4,
    panel_inches: float = 2.5,
    dpi: int = 100,
) -> None:
    """Rows of [image, reference overlay, prediction overlay] for the first `max_rows` examples.

    images: (N, H, W[, C]); labels, preds: (N, H, W) integer class maps. Each class keeps one colour in every
    figure (background transparent); a legend names the classes. Each panel is `panel_inches` square at `dpi`,
    so the PNG is 3 * panel_inches * dpi wide and rows * panel_inches * dpi (+ legend strip) high.
    """
    images, labels, preds = np.asarray(images), np.asarray(labels), np.asarray(preds)
    if not (len(images) == len(labels) == len(preds)) or len(images) == 0:
        raise ValueError(f"need the same non-zero number of images, labels and preds, got "
                         f"{len(images)}, {len(labels)}, {len(preds)}")
    if labels.shape != preds.shape or labels.shape[:3] != images.shape[:3]:
        raise ValueError(f"shapes differ: images {images.shape}, labels {labels.shape}, preds {preds.shape}")
    rows = min(max_rows, len(images))
    num_classes = max(len(class_names), int(max(labels.max(), preds.max())) + 1)
    legend_inches = 0.5
    fig, axes = _figure((3 * panel_inches, rows * panel_inches + legend_inches), rows, 3)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - legend_inches / (rows * panel_inches + legend_inches),
                        bottom=0.01, wspace=0.02, hspace=0.12)
    for r in range(rows):
        grey = _as_2d_image(images[r])
        cmap = None if grey.ndim == 3 else "gray"
        for c, (title, overlay) in enumerate((("image", None), ("reference", labels[r]), ("prediction", preds[r]))):
            ax = axes[r, c]
            ax.imshow(grey, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            if overlay is not None:
                ax.imshow(_rgba_overlay(overlay, num_classes), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
    from matplotlib.patches import Patch

    names = [str(class_names[c]) if c < len(class_names) else f"class{c}" for c in range(1, num_classes)]
    handles = [Patch(facecolor=class_colour(c), alpha=min(1.0, OVERLAY_ALPHA + 0.3), label=n)
               for c, n in enumerate(names, start=1)]
    if handles:
        fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    _save_atomic(fig, path, dpi)


def _numeric(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(value)  # metrics.jsonl stores non-finite values as strings
    return None


EVAL_SPLITS = ("val", "eval")
HEADLINE_METRICS = ("dice_mean", "acc", "accuracy", "auc")
_SKIP = {"step", "split", "img_per_s", "examples_per_s", "time", "wall_s", "eval_s", "lr", "learning_rate"}


def save_curves_png(path: str, records: list[dict], dpi: int = 100, figsize=(9.0, 3.5)) -> None:
    """Training loss vs step (left; records with split "train") and evaluation metrics vs step (right; records
    with split "val"/"eval": every numeric key except bookkeeping, headline metrics drawn thicker; an eval
    "loss" goes on the left with the training loss). Works with no eval records (the right panel says so) and
    with no records at all. Non-finite values (stored as strings) leave gaps."""
    fig, axes = _figure(figsize, 1, 2)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.91, wspace=0.18)  # fixed: layout engines are slow
    ax_loss, ax_eval = axes[0]

    def series(split_names, key):
        pts = [(r["step"], _numeric(r.get(key))) for r in records
               if r.get("split") in split_names and "step" in r and _numeric(r.get(key)) is not None]
        pts.sort(key=lambda p: p[0])
        return [p[0] for p in pts], [p[1] for p in pts]

    steps, loss = series(("train",), "loss")
    if steps:
        ax_loss.plot(steps, loss, label="train loss", color="C0", lw=1.2)
    v_steps, v_loss = series(EVAL_SPLITS, "loss")
    if v_steps:
        ax_loss.plot(v_steps, v_loss, "o-", label="eval loss", color="C1", lw=1.2, ms=3)
    finite = [v for v in loss + v_loss if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 20:
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training loss", fontsize=10)
    if steps or v_steps:
        ax_loss.legend(fontsize=8, loc="upper right")
    else:
        ax_loss.text(0.5, 0.5, "no training records", ha="center", va="center", transform=ax_loss.transAxes)
    ax_loss.grid(alpha=0.3)

    keys: list[str] = []
    for r in records:
        if r.get("split") in EVAL_SPLITS:
            for k, v in r.items():
                if k not in _SKIP and k != "loss" and k not in keys and _numeric(v) is not None:
                    keys.append(k)
    keys.sort(key=lambda k: (k not in HEADLINE_METRICS, HEADLINE_METRICS.index(k) if k in HEADLINE_METRICS else 0))
    for i, k in enumerate(keys):
        s, v = series(EVAL_SPLITS, k)
        head = k in HEADLINE_METRICS
        ax_eval.plot(s, v, "o-" if head else ".-", label=k, lw=2.0 if head else 0.9, ms=4 if head else 3,
                     alpha=1.0 if head else 0.7, color=f"C{i % 10}")
    ax_eval.set_xlabel("step")
    ax_eval.set_title("evaluation", fontsize=10)
    if keys:
        ax_eval.legend(fontsize=7, ncol=1 if len(keys) <= 6 else 2, loc="lower right")
        if steps:
            ax_eval.set_xlim(ax_loss.get_xlim())
    else:
        ax_eval.text(0.5, 0.5, "no evaluation records yet", ha="center", va="center", transform=ax_eval.transAxes)
    ax_eval.grid(alpha=0.3)
    _save_atomic(fig, path, dpi)


def save_image_grid_png(path: str, rows: Sequence[np.ndarray], row_titles: Sequence[str] | None = None,
                        value_range: tuple[float, float] = (-1.0, 1.0), dpi: int = 100) -> None:
    """A grid of grey images: one row per array (N, *spatial, C), N columns; 3D images show their middle slice.

    All images share `value_range` (GAN outputs in [-1, 1] by default), so rows are comparable: a generated image
    looks as bright as it is, not stretched to its own range.
    """
    rows = [np.asarray(r, np.float32) for r in rows]
    ncols = max(len(r) for r in rows)
    fig, axes = _figure((1.4 * ncols, 1.5 * len(rows)), len(rows), ncols)
    for i, images in enumerate(rows):
        for j in range(ncols):
            ax = axes[i, j]
            ax.set_axis_off()
            if j >= len(images):
                continue
            x = images[j]
            if x.ndim == 4:  # (D, H, W, C): middle slice
                x = x[x.shape[0] // 2]
            ax.imshow(x[..., 0], cmap="gray", vmin=value_range[0], vmax=value_range[1], interpolation="nearest")
        if row_titles:
            axes[i, 0].set_title(row_titles[i], fontsize=8, loc="left")
    fig.tight_layout()
    _save_atomic(fig, path, dpi)


def save_heatmap_png(path: str, thumbnail: np.ndarray, heat: np.ndarray, extent: tuple[float, float, float, float],
                     title: str = "", value_range: tuple[float, float] | None = None, label: str = "",
                     alpha: float = 0.5, dpi: int = 100) -> None:
    """A slide thumbnail (H, W, 3) beside the same thumbnail under a heat map (rows, cols) of per-tile values
    (NaN: no tile, left clear). `extent` (left, right, bottom, top) places the heat map's outer edges in
    thumbnail pixels (matplotlib's imshow extent); `value_range` fixes the colour scale (default: the values'
    own min and max); `label` names the colour bar."""
    thumb = np.asarray(thumbnail)
    heat = np.ma.masked_invalid(np.asarray(heat, np.float64))
    lo, hi = value_range if value_range is not None else (float(heat.min()), float(heat.max()))
    aspect = thumb.shape[0] / max(thumb.shape[1], 1)
    fig, axes = _figure((8.0, 4.0 * aspect + 0.6), 1, 2)
    for ax in axes[0]:
        ax.imshow(thumb, interpolation="nearest")
        ax.set_axis_off()
    shown = axes[0, 1].imshow(heat, cmap="jet", vmin=lo, vmax=hi if hi > lo else lo + 1e-12, alpha=alpha,
                              extent=extent, interpolation="nearest")
    axes[0, 1].set_xlim(0, thumb.shape[1])
    axes[0, 1].set_ylim(thumb.shape[0], 0)
    fig.colorbar(shown, ax=axes[0, 1], fraction=0.046, pad=0.02, label=label)
    if title:
        fig.suptitle(title, fontsize=9)
    _save_atomic(fig, path, dpi)


def save_reliability_png(path: str, panels: Sequence[tuple[str, Mapping[str, np.ndarray]]], dpi: int = 100) -> None:
    """Reliability diagrams side by side, one per (title, bins): bins as `medjax.trust.calibration.bin_statistics`
    gives them for equal-width bins (`count`, mean `confidence` and `accuracy` per bin; the last bin holds the
    confidences of exactly 1.0 and is drawn at 1.0). Top: accuracy per bin as bars against the diagonal of perfect
    calibration, the gap to the bin's mean confidence in red; bottom: the share of examples per bin."""
    fig, axes = _figure((4.0 * len(panels), 5.0), 2, len(panels), gridspec_kw={"height_ratios": (3, 1)})
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.09, top=0.93, hspace=0.08, wspace=0.25)
    for col, (title, bins) in enumerate(panels):
        count = np.asarray(bins["count"], np.float64)
        n = len(count) - 1
        left = np.r_[np.arange(n) / n, 1.0]
        width = np.r_[np.full(n, 1.0 / n), 0.4 / n]
        filled = count > 0
        ax, hist = axes[0, col], axes[1, col]
        ax.plot([0, 1], [0, 1], "--", color="0.5", lw=1, label="perfect calibration")
        ax.bar(left[filled], np.asarray(bins["accuracy"])[filled], width[filled], align="edge", color="C0",
               edgecolor="white", label="accuracy")
        conf = np.asarray(bins["confidence"])[filled]
        acc = np.asarray(bins["accuracy"])[filled]
        ax.bar(left[filled], conf - acc, width[filled], bottom=acc, align="edge", color="C3", alpha=0.35,
               label="gap to confidence")
        ax.set_xlim(0, 1.0 + 0.4 / n)
        ax.set_ylim(0, 1)
        ax.set_xticks([])
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        hist.bar(left, count / max(count.sum(), 1.0), width, align="edge", color="0.4")
        hist.set_xlim(ax.get_xlim())
        hist.set_xlabel("confidence")
        if col == 0:
            ax.set_ylabel("accuracy")
            hist.set_ylabel("share")
            ax.legend(fontsize=7, loc="upper left")
    _save_atomic(fig, path, dpi)


def save_subgroups_png(path: str, panels: Sequence[Mapping], dpi: int = 100) -> None:
    """One panel per metric (`title`): each group's value (`values`, None = undefined, not drawn) as a point with
    its confidence interval (`intervals`, (low, high) or None) as a bar, the group labelled with its size
    (`groups`, `n`)."""
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = _figure((4.0 * cols, 0.4 + rows * (0.6 + 0.35 * max(len(p["groups"]) for p in panels))), rows, cols)
    fig.subplots_adjust(left=0.14, right=0.98, bottom=0.05, top=0.95, hspace=0.6, wspace=0.55)
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.set_axis_off()
            continue
        panel = panels[k]
        y = np.arange(len(panel["groups"]))
        for i, (value, interval) in enumerate(zip(panel["values"], panel["intervals"])):
            if interval is not None:
                ax.plot(interval, [i, i], color="C0", lw=2)
            if value is not None:
                ax.plot([value], [i], "o", color="C0" if interval is not None else "0.5", ms=5)
        ax.set_yticks(y, [f"{g} (n={n})" for g, n in zip(panel["groups"], panel["n"])], fontsize=8)
        ax.set_ylim(len(y) - 0.5, -0.5)
        ax.set_title(panel["title"], fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    _save_atomic(fig, path, dpi)


def save_uncertainty_png(path: str, images: np.ndarray, preds: np.ndarray, entropy: np.ndarray,
                         mutual_information: np.ndarray, class_names: Sequence[str], max_rows: int = 4,
                         panel_inches: float = 2.5, dpi: int = 100) -> None:
    """Rows of [image, prediction overlay, predictive entropy, mutual information] for the first `max_rows` 2D
    examples: images (N, H, W[, C]), preds (N, H, W) class maps, the maps (N, H, W) in nats. Every row shares one
    colour scale per map, from 0 to its largest value over the rows shown, so rows compare."""
    images, preds = np.asarray(images), np.asarray(preds)
    maps = [np.asarray(entropy, np.float32), np.asarray(mutual_information, np.float32)]
    rows = min(max_rows, len(images))
    num_classes = max(len(class_names), int(preds.max(initial=0)) + 1)
    fig, axes = _figure((4 * panel_inches, rows * panel_inches), rows, 4)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.95, bottom=0.01, wspace=0.02, hspace=0.12)
    tops = [max(float(m[:rows].max(initial=0.0)), 1e-6) for m in maps]
    for r in range(rows):
        grey = _as_2d_image(images[r])
        for c, title in enumerate(("image", "prediction", "entropy (nats)", "mutual information (nats)")):
            ax = axes[r, c]
            if c < 2:
                ax.imshow(grey, cmap=None if grey.ndim == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
                if c == 1:
                    ax.imshow(_rgba_overlay(preds[r], num_classes), interpolation="nearest")
            else:
                ax.imshow(maps[c - 2][r], cmap="magma", vmin=0, vmax=tops[c - 2], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{title}" + (f", max {tops[c - 2]:.3g}" if c >= 2 else ""), fontsize=8)
    _save_atomic(fig, path, dpi)


def save_referral_png(path: str, curves: dict[str, list[dict]], dpi: int = 100) -> None:
    """Referral curves: each metric of the retained cases against the fraction referred, one line per uncertainty
    score (`curves`: score name -> rows of `medjax.trust.uncertainty.referral_curve`)."""
    metrics = [k for k in next(iter(curves.values()))[0] if k not in ("fraction", "retained")]
    fig, axes = _figure((3.5 * len(metrics), 3.0), 1, len(metrics))
    for ax, metric in zip(axes[0], metrics):
        for score, rows in curves.items():
            xs = [r["fraction"] for r in rows if r[metric] is not None]
            ax.plot(xs, [r[metric] for r in rows if r[metric] is not None], marker="o", markersize=3, label=score)
        ax.set_xlabel("fraction referred")
        ax.set_ylabel(f"{metric} of the retained cases")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save_atomic(fig, path, dpi)


def boxes_in_slice(boxes: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(the 2D boxes (x1, y1, x2, y2) that 3D corner boxes (x1, y1, z1, x2, y2, z2) cut on the slice `index` of the
    third array axis, i.e. whose [z1, z2] holds the voxel centre index + 1/2; which boxes those are (a mask)). 2D
    boxes are returned as they are, all kept."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, np.shape(boxes)[-1] if np.size(boxes) else 4)
    if boxes.shape[1] == 4:
        return boxes, np.ones(len(boxes), bool)
    centre = index + 0.5
    inside = (boxes[:, 2] <= centre) & (centre <= boxes[:, 5])
    return boxes[inside][:, [0, 1, 3, 4]], inside


def save_detections_png(path: str, panels: Sequence[tuple[str, np.ndarray, Mapping]], extra: int = 2,
                        panel_inches: float = 3.0, dpi: int = 100) -> None:
    """One panel per case: the image (a 3D volume's slice through the centre of its first reference box, else of
    its best detection, else its middle slice) with the reference boxes (green) and the best detections (red,
    as many as there are reference boxes plus `extra`, with their scores) that cross it.

    panels: (title, image (*spatial, C), record) with record["reference"]["box"] and record["detections"]["box"]
    / ["score"] (best first) in voxel corners along the image's array axes (a `DetectionTask.case_records` row).
    """
    from matplotlib.patches import Rectangle

    if not panels:
        raise ValueError("need at least one case to draw")
    fig, axes = _figure((len(panels) * panel_inches, panel_inches + 0.3), 1, len(panels))
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.01, wspace=0.04)
    for ax, (title, image, record) in zip(axes[0], panels):
        ref = np.asarray(record["reference"]["box"], np.float64)
        det = np.asarray(record["detections"]["box"], np.float64)[:len(ref) + extra]
        scores = list(record["detections"]["score"])[:len(det)]
        image = np.asarray(image)
        if image.ndim == 4:  # (X, Y, Z, C): a slice along Z
            anchor = ref[0] if len(ref) else det[0] if len(det) else None
            index = int(np.clip((anchor[2] + anchor[5]) / 2, 0, image.shape[2] - 1)) if anchor is not None \
                else image.shape[2] // 2
            image, title = image[:, :, index], f"{title} (slice {index})"
            det, keep = boxes_in_slice(det, index)
            scores = [s for s, k in zip(scores, keep) if k]
            ref = boxes_in_slice(ref, index)[0]
        ax.imshow(_as_2d_image(image), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        for boxes, colour in ((ref, "lime"), (det, "red")):
            for b in boxes.reshape(-1, 4):  # array axis 0 is the plot's vertical axis; voxel i spans i-1/2 .. i+1/2
                ax.add_patch(Rectangle((b[1] - 0.5, b[0] - 0.5), b[3] - b[1], b[2] - b[0], fill=False,
                                       edgecolor=colour, lw=1.2))
        for b, s in zip(det.reshape(-1, 4), scores):
            ax.text(b[1] - 0.5, b[0] - 1.0, f"{s:.2f}", color="red", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=9)
    fig.suptitle("reference (green) and detections (red, score)", fontsize=9)
    _save_atomic(fig, path, dpi)


def save_attribution_png(path: str, images: np.ndarray, maps: np.ndarray, row_titles: Sequence[str] | None = None,
                         panel_inches: float = 2.5, dpi: int = 100) -> None:
    """Rows of [image, attribution map over the image] (an explanation per example), 2D or the middle slice of 3D.

    images: (N, *spatial, C); maps: (N, *spatial), one value per voxel. Each map is shown on its own symmetric
    scale (red positive, blue negative, transparent near 0), so a map's largest value is always full colour.
    """
    from matplotlib import colormaps

    images, maps = np.asarray(images, np.float32), np.asarray(maps, np.float32)
    if len(images) != len(maps) or len(images) == 0 or images.shape[:-1] != maps.shape:
        raise ValueError(f"need one map per image of its spatial shape, got images {images.shape}, maps {maps.shape}")
    if maps.ndim == 4:  # 3D: the middle slice along the first spatial axis
        mid = maps.shape[1] // 2
        images, maps = images[:, mid], maps[:, mid]
    rows = len(images)
    fig, axes = _figure((2 * panel_inches, rows * panel_inches), rows, 2)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.97, bottom=0.01, wspace=0.02, hspace=0.15)
    for r in range(rows):
        grey = _as_2d_image(images[r])
        cmap = None if grey.ndim == 3 else "gray"
        scale = float(np.abs(maps[r]).max()) or 1.0
        colours = colormaps["bwr"]((maps[r] / scale + 1) / 2)
        colours[..., 3] = np.clip(np.abs(maps[r]) / scale, 0, 1) * 0.8
        for c in range(2):
            ax = axes[r, c]
            ax.imshow(grey, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            if c == 1:
                ax.imshow(colours, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        if row_titles:
            axes[r, 1].set_title(row_titles[r], fontsize=8)
    _save_atomic(fig, path, dpi)
