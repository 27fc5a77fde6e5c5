"""Box coding: hand-computed deltas, the clip on size deltas, and encode/decode parity with MONAI's `BoxCoder`
in 2D and 3D."""

import math

import jax
import numpy as np
import pytest

from medjax.detection import coder
from medjax.errors import MedjaxError
from tests.detection.helpers import random_boxes


@jax.jit
def _by_hand(box, anchor, anchor3, deltas3):
    deltas = coder.encode_boxes(box, anchor, weights=(10, 10, 5, 5))
    return deltas, coder.decode_boxes(deltas, anchor, weights=(10, 10, 5, 5)), coder.decode_boxes(deltas3, anchor3)


def test_deltas_by_hand_and_round_trip():
    anchor = np.array([[0, 0, 4, 2]], np.float32)  # centre (2, 1), size (4, 2)
    box = np.array([[2, 0, 10, 2]], np.float32)  # centre (6, 1), size (8, 2)
    # 3D with default weights: a huge size delta is clipped at log(1000/16): the size grows 62.5-fold at most
    anchor3 = np.array([[0, 0, 0, 2, 2, 2]], np.float32)
    deltas, decoded, decoded3 = _by_hand(box, anchor, anchor3, np.array([[0, 0, 0, 50, 0, 0]], np.float32))
    np.testing.assert_allclose(deltas, [[10 * 4 / 4, 0, 5 * math.log(2), 0]], rtol=1e-6)
    np.testing.assert_allclose(decoded, box, rtol=1e-6)
    np.testing.assert_allclose(decoded3, [[1 - 62.5, 0, 0, 1 + 62.5, 2, 2]], rtol=1e-5)
    with pytest.raises(MedjaxError, match="needs 6 weights"):
        coder.encode_boxes(anchor3, anchor3, weights=(1, 1, 1, 1))


@pytest.mark.parametrize("dims", [2, 3])
def test_parity_with_monai_box_coder(dims):
    torch = pytest.importorskip("torch")
    from monai.apps.detection.utils.box_coder import BoxCoder

    rng = np.random.default_rng(10 + dims)
    weights = tuple(rng.uniform(0.5, 10, 2 * dims).round(2))
    anchors, boxes = random_boxes(rng, 50, dims), random_boxes(rng, 50, dims)
    theirs = BoxCoder(weights)
    deltas = rng.normal(0, 2, (50, 2 * dims)).astype(np.float32) * np.asarray(weights, np.float32)
    enc, dec = jax.jit(lambda b, a, d: (coder.encode_boxes(b, a, weights), coder.decode_boxes(d, a, weights)))(
        boxes, anchors, deltas)
    their_enc = theirs.encode_single(torch.from_numpy(boxes), torch.from_numpy(anchors)).numpy()
    np.testing.assert_allclose(enc, their_enc, rtol=1e-5, atol=1e-5)
    their_dec = theirs.decode_single(torch.from_numpy(deltas), torch.from_numpy(anchors)).numpy()
    np.testing.assert_allclose(dec, their_dec, rtol=1e-5, atol=1e-4)
