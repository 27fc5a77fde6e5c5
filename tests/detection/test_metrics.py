"""Detection metrics: COCO mAP/AR against pycocotools' COCOeval on random 2D detections (several images and
classes) and by hand in 2D and 3D; LUNA16 FROC/CPM by hand (centre-distance and IoU rules, ignored findings,
double hits) and against a transcription of LUNA16's `computeFROC` (scikit-learn's ROC curve + numpy.interp);
the bootstrap against explicitly resampled cases."""

import contextlib
import io

import numpy as np
import pytest

from medjax.detection import metrics as mt
from medjax.errors import MedjaxError

COCO_KEYS = ["mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1", "AR10", "AR100", "AR_small",
             "AR_medium", "AR_large"]


def _random_cases(seed, num_images=8, num_classes=3):
    """Integer-coordinate 2D references of all COCO sizes and detections: jittered copies (some misclassified)
    plus clutter, with distinct scores; integers keep IoUs bitwise equal to pycocotools'."""
    rng = np.random.default_rng(seed)
    pb, ps, pl, gb, gl = [], [], [], [], []
    for i in range(num_images):
        g = int(rng.integers(0, 7)) if i else 0  # image 0 has detections only
        xy, wh = rng.integers(0, 300, (g, 2)), rng.integers(8, 160, (g, 2))
        gt = np.concatenate([xy, xy + wh], 1)
        lab = rng.integers(0, num_classes, g)
        copies = np.repeat(gt, 2, axis=0) + rng.integers(-12, 13, (2 * g, 4))
        clutter_xy = rng.integers(0, 400, (int(rng.integers(0, 6)), 2))
        clutter = np.concatenate([clutter_xy, clutter_xy + rng.integers(5, 120, clutter_xy.shape)], 1)
        det = np.concatenate([copies, clutter]).astype(np.float64)
        det[:, 2:] = np.maximum(det[:, 2:], det[:, :2] + 1)
        det_lab = np.concatenate([np.repeat(lab, 2), rng.integers(0, num_classes, len(clutter))])
        flip = rng.random(len(det_lab)) < 0.1
        det_lab[flip] = rng.integers(0, num_classes, flip.sum())
        pb.append(det), ps.append(rng.random(len(det))), pl.append(det_lab)
        gb.append(gt.astype(np.float64)), gl.append(lab)
    return pb, ps, pl, gb, gl


def _pycocotools(pb, ps, pl, gb, gl, num_classes, max_dets=(1, 10, 100)):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    gt = COCO()
    anns = [{"id": len(anns_) + 1, "image_id": i + 1, "category_id": int(c) + 1, "bbox": xywh(b), "iscrowd": 0,
             "area": float((b[2] - b[0]) * (b[3] - b[1]))}
            for anns_ in [[]] for i, (boxes, labs) in enumerate(zip(gb, gl)) for b, c in zip(boxes, labs)
            if anns_.append(0) is None]
    gt.dataset = {"images": [{"id": i + 1} for i in range(len(gb))], "annotations": anns,
                  "categories": [{"id": k + 1} for k in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes([{"image_id": i + 1, "category_id": int(c) + 1, "bbox": xywh(b), "score": float(s)}
                         for i, (boxes, scores, labs) in enumerate(zip(pb, ps, pl))
                         for b, s, c in zip(boxes, scores, labs)])
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = list(max_dets)
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return ev


@pytest.mark.parametrize("seed, max_dets", [(0, (1, 10, 100)), (1, (1, 3, 5))])
def test_coco_parity_with_pycocotools(seed, max_dets):
    pytest.importorskip("pycocotools")
    cases = _random_cases(seed)
    ev = _pycocotools(*cases, 3, max_dets)
    ours = mt.coco_metrics(*cases, 3, max_dets=max_dets)
    np.testing.assert_allclose(ours["precision"], ev.eval["precision"], atol=1e-12)
    np.testing.assert_allclose(ours["recall"], ev.eval["recall"], atol=1e-12)
    # COCOeval's first summary number reads maxDets=100 whatever the list: -1 for (1, 3, 5); ours the last limit
    p = ev.eval["precision"][..., 0, -1]
    np.testing.assert_allclose(ours["mAP"], p[p > -1].mean(), atol=1e-12)
    np.testing.assert_allclose([ours[k] for k in COCO_KEYS[1:6]], ev.stats[1:6], atol=1e-12)
    np.testing.assert_allclose([ours[f"AR{m}"] for m in max_dets] + [ours[k] for k in COCO_KEYS[9:]],
                               ev.stats[6:], atol=1e-12)
    if max_dets[-1] == 100:
        assert ours["mAP"] == ev.stats[0] and min(ours[k] for k in COCO_KEYS) > 0  # every area range populated
        assert 0.1 < ours["mAP"] < ours["AP50"]
    # 3D is the same computation on volumes: the boxes extruded to depth 1 give the same numbers
    pb, ps, pl, gb, gl = cases
    extrude = [np.insert(np.insert(b, 2, 0, axis=1), 5, 1, axis=1) for b in pb + gb]
    ours3 = mt.coco_metrics(extrude[:len(pb)], ps, pl, extrude[len(pb):], gl, 3, max_dets=max_dets,
                            area_ranges=mt.AREA_RANGES_2D)
    np.testing.assert_array_equal(ours3["precision"], ours["precision"])
    assert mt.coco_metrics(extrude[:len(pb)], ps, pl, extrude[len(pb):], gl, 3)["AP_large"] == -1  # < 96**3


def _hand_case(dims):
    """One image, one class: references r1, r2; detections 0.9 -> r1 (IoU 1), 0.8 -> nothing, 0.7 -> r2 (IoU 1).
    Precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> interpolated 1 at the 51 recall points <= 0.5 and 2/3 at the
    50 above: AP = (51 + 50 * 2/3) / 101 at every IoU threshold; AR = 1."""
    refs = np.array([[0, 0, 10, 10], [20, 20, 60, 30]], np.float64)
    dets = np.array([[0, 0, 10, 10], [100, 100, 110, 110], [20, 20, 60, 30]], np.float64)
    if dims == 3:
        refs = np.insert(np.insert(refs, 2, 0, axis=1), 5, 4, axis=1)
        dets = np.insert(np.insert(dets, 2, 0, axis=1), 5, 4, axis=1)
    return [dets], [np.array([0.9, 0.8, 0.7])], [np.zeros(3, int)], [refs], [np.zeros(2, int)]


@pytest.mark.parametrize("dims", [2, 3])
def test_coco_by_hand(dims):
    out = mt.coco_metrics(*_hand_case(dims), num_classes=2)  # class 1 has no reference: left out of the means
    ap = (51 + 50 * 2 / 3) / 101
    np.testing.assert_allclose([out["mAP"], out["AP50"], out["AP75"], out["AR100"]], [ap, ap, ap, 1.0])
    assert out["AR1"] == 0.5 and out["AR10"] == 1.0
    np.testing.assert_allclose(out["AP_per_class"], [ap, -1])
    # sizes: r1 is 10x10 (small in 2D), r2 40x10 = 400 (small); in 3D 400 and 1600 voxels (small < 32**3)
    np.testing.assert_allclose([out["AP_small"], out["AP_medium"], out["AP_large"]], [ap, -1, -1])
    # a smaller "small" range ignores r2 and the detection that found it: precision 1, 1/2 at recall 1
    ranges = {"all": (0, 1e12), "small": (0, 150 * (4 if dims == 3 else 1)), "medium": (0, 0), "large": (0, 0)}
    out = mt.coco_metrics(*_hand_case(dims), num_classes=1, area_ranges=ranges)
    np.testing.assert_allclose(out["AP_small"], 1.0)


def test_coco_bootstrap_equals_resampled_cases():
    cases = _random_cases(3, num_images=6)
    out = mt.coco_metrics(*cases, 3, num_resamples=5, seed=11)
    counts = mt.bootstrap_counts(6, 5, seed=11)
    for b in (0, 3):
        pick = np.repeat(np.arange(6), counts[b])
        again = mt.coco_metrics(*[[c[i] for i in pick] for c in cases], 3)
        np.testing.assert_allclose(out["mAP_samples"][b], again["mAP"], atol=1e-12)
    lo, hi = out["mAP_ci"]
    assert lo <= np.median(out["mAP_samples"]) <= hi and lo < hi


def test_unpad_fixed_size_detections():
    boxes = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    valid = np.array([[True, True, False], [False, False, False]])
    b, s, lab = mt.unpad((boxes, np.ones((2, 3)), np.zeros((2, 3), int), valid))
    assert [len(x) for x in b] == [2, 0] and [len(x) for x in s] == [2, 0] and [len(x) for x in lab] == [2, 0]
    np.testing.assert_array_equal(b[0], boxes[0, :2])


def test_coco_errors():
    with pytest.raises(MedjaxError, match="gt_boxes has 1 cases, the predictions 2"):
        mt.coco_metrics([np.zeros((0, 4))] * 2, [np.zeros(0)] * 2, [np.zeros(0)] * 2, [np.zeros((0, 4))],
                        [np.zeros(0)], 1)
    with pytest.raises(MedjaxError, match="\\(2D like the others\\), got shape \\(1, 6\\)"):
        mt.coco_metrics([np.zeros((1, 4)), np.zeros((1, 6))], [np.ones(1)] * 2, [np.zeros(1)] * 2,
                        [np.zeros((0, 4))] * 2, [np.zeros(0)] * 2, 1)


def _cube(centre, side):
    c = np.asarray(centre, np.float64)
    return np.concatenate([c - side / 2, c + side / 2])


def test_froc_by_hand():
    # case 0: A (centre 10, diameter 6) hit by 0.9 and 0.5 (one hit, the 0.5 is no FP); B (centre 30, diameter 4)
    # missed: the 0.7 detection is 2.5 away, outside its radius 2 -> FP; 0.8 far away -> FP
    # case 1: C hit by 0.6; FPs 0.95 and 0.3
    refs = [np.stack([_cube((10, 10, 10), 6), _cube((30, 30, 30), 4)]), _cube((50, 50, 50), 8)[None]]
    dets = [np.stack([_cube((11, 10, 10), 4), _cube((10, 12, 10), 4), _cube((80, 80, 80), 4),
                      _cube((32.5, 30, 30), 4)]),
            np.stack([_cube((51, 51, 51), 6), _cube((0, 0, 0), 4), _cube((90, 0, 0), 4)])]
    scores = [np.array([0.9, 0.5, 0.8, 0.7]), np.array([0.6, 0.95, 0.3])]
    out = mt.froc(dets, scores, refs)
    # by score: .95 FP, .9 TP, .8 FP, .7 FP, .6 TP, .3 FP; 3 lesions, 2 scans -> FROC points (FP/2, TP/3):
    # (0,0) (.5,0) (.5,1/3) (1,1/3) (1.5,1/3) (1.5,2/3) (2,2/3)
    np.testing.assert_allclose(out["fps"], [0, 0.5, 0.5, 1, 1.5, 1.5, 2])
    np.testing.assert_allclose(out["curve_sensitivity"], [0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(out["sensitivity"], [0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(out["cpm"], (2 / 3 + 2) / 7)
    assert out["num_lesions"] == 3 and out["num_cases"] == 2
    # B ignored (LUNA16's excluded findings) and a radius of 3 for it: the 0.7 detection is no FP and B no lesion
    out = mt.froc(dets, scores, refs, gt_ignore=[np.array([False, True]), np.array([False])],
                  gt_radius=[np.array([3.0, 3.0]), np.array([4.0])])
    np.testing.assert_allclose(out["fps"], [0, 0.5, 0.5, 1, 1, 1.5])  # FPs .95, .8, .3; TPs .9, .6 of 2
    np.testing.assert_allclose(out["sensitivity"], [0, 0, 0.5, 1, 1, 1, 1])
    # the IoU rule (2D): one detection overlapping two references with IoU 14/18 each counts for both (LUNA16
    # iterates over references, not detections); with no false positive the whole curve sits at fps 0
    two = [np.stack([_cube((0, 0), 4), _cube((1, 0), 4)])]
    out = mt.froc([_cube((0.5, 0), 4)[None]], [np.array([0.8])], two, match="iou", iou_threshold=0.5)
    np.testing.assert_allclose(out["sensitivity"], np.ones(7))
    assert out["num_lesions"] == 2
    with pytest.raises(MedjaxError, match="match must be"):
        mt.froc(dets, scores, refs, match="overlap")


def test_cases_without_boxes_do_not_fix_the_rank():
    """3D cases without any predicted box ((0, 6) arrays or []) before or beside 3D references (a segmenter that
    found no component) are scored, not refused as 2D."""
    refs = [np.zeros((0, 6)), _cube((10, 10, 10), 6)[None]]
    none = mt.froc([np.zeros((0, 6)), np.zeros((0, 6))], [[], []], refs)
    np.testing.assert_array_equal(none["sensitivity"], np.zeros(7))
    assert (none["num_lesions"], none["num_cases"]) == (1, 2)
    exact = [[], _cube((10, 10, 10), 6)[None]]
    np.testing.assert_array_equal(mt.froc(exact, [[], [0.9]], refs)["sensitivity"], np.ones(7))
    assert mt.coco_metrics(exact, [[], [0.9]], [[], [0]], refs, [[], [0]], 1)["mAP"] == pytest.approx(1.0, abs=1e-12)


def _luna16_compute_froc(gt_list, prob_list, num_images, exclude_list):
    """LUNA16's noduleCADEvaluationLUNA16.computeFROC and the read-off at the 7 rates, transcribed."""
    from sklearn.metrics import roc_curve

    gt_local = [g for g, e in zip(gt_list, exclude_list) if not e]
    prob_local = [p for p, e in zip(prob_list, exclude_list) if not e]
    detected, total, candidates = sum(gt_local), sum(gt_list), len(prob_local)
    fpr, tpr, _ = roc_curve(gt_local, prob_local)
    fps = np.zeros(len(fpr)) if sum(gt_list) == len(gt_list) else fpr * (candidates - detected) / num_images
    sens = (tpr * detected) / total
    return np.interp(mt.LUNA16_FP_RATES, fps, sens)


@pytest.mark.parametrize("seed", [0, 1])
def test_froc_equals_luna16_evaluation_on_random_cases(seed):
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(seed)
    dets, scores, refs, gt_list, prob_list, exclude = [], [], [], [], [], []
    for _ in range(12):
        centres = rng.uniform(0, 100, (int(rng.integers(0, 4)), 3))
        diam = rng.uniform(4, 12, len(centres))
        found = rng.random(len(centres)) < 0.7
        near = centres[found] + rng.normal(0, 0.5, (found.sum(), 3))
        clutter = rng.uniform(200, 300, (int(rng.integers(0, 6)), 3))
        d = np.concatenate([near, clutter])
        s = np.round(rng.random(len(d)), 2)  # ties between scores, as real CAD outputs have
        refs.append(np.array([_cube(c, w) for c, w in zip(centres, diam)]).reshape(-1, 6))
        dets.append(np.array([_cube(c, 3) for c in d]).reshape(-1, 6)), scores.append(s)
        gt_list += [1.0] * len(centres) + [0.0] * len(clutter)
        prob_list += list(s[:found.sum()]) + [-1e9] * int((~found).sum()) + list(s[found.sum():])
        exclude += [False] * int(found.sum()) + [True] * int((~found).sum()) + [False] * len(clutter)
    expected = _luna16_compute_froc(gt_list, prob_list, 12, exclude)
    out = mt.froc(dets, scores, refs)
    np.testing.assert_allclose(out["sensitivity"], expected, atol=1e-12)
    assert 0 < out["cpm"] < 1


def test_froc_bootstrap_equals_resampled_cases_and_interp_rows_equals_numpy():
    rng = np.random.default_rng(5)
    refs = [np.stack([_cube(rng.uniform(0, 50, 3), 8) for _ in range(2)]) for _ in range(5)]
    dets = [np.concatenate([r + rng.normal(0, 1, r.shape), np.stack([_cube(rng.uniform(60, 99, 3), 4)] * 2)])
            for r in refs]
    scores = [rng.random(4) for _ in refs]
    out = mt.froc(dets, scores, refs, num_resamples=4, seed=2)
    counts = mt.bootstrap_counts(5, 4, seed=2)
    for b in range(4):
        pick = np.repeat(np.arange(5), counts[b])
        again = mt.froc([dets[i] for i in pick], [scores[i] for i in pick], [refs[i] for i in pick])
        np.testing.assert_allclose(out["cpm_samples"][b], again["cpm"], atol=1e-12)
    # the row-wise interpolation behind it, with repeated x values and queries exactly on them
    xp = np.sort(rng.integers(0, 6, (20, 9)) / 2.0, axis=1)
    fp = np.sort(rng.random((20, 9)), axis=1)
    x = np.array([-1, 0, 0.5, 1, 1.25, 2, 2.5, 3, 9])
    np.testing.assert_array_equal(mt._interp_rows(x, xp, fp), np.stack([np.interp(x, a, b) for a, b in zip(xp, fp)]))
