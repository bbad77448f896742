"""Box utilities against a plain-Python float64 reference, on NumPy and JAX inputs."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from scenic.model_lib import box_utils


def random_xyxy(rng, n):
    corners = rng.random((n, 2, 2))
    lo, hi = corners.min(axis=1), corners.max(axis=1)
    return np.concatenate([lo, hi + 1e-3], axis=1)


def reference_iou_giou(a, b):
    ix0, iy0, ix1, iy1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(ix1 - ix0, 0.0) * max(iy1 - iy0, 0.0)
    area = lambda x: (x[2] - x[0]) * (x[3] - x[1])
    union = area(a) + area(b) - inter
    ex0, ey0, ex1, ey1 = min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])
    enclosing = (ex1 - ex0) * (ey1 - ey0)
    iou = inter / union
    return iou, iou - (enclosing - union) / enclosing


@pytest.mark.parametrize("module", [np, jnp])
def test_conversions_round_trip_and_agree(module):
    boxes = random_xyxy(np.random.default_rng(0), 50)
    x = module.asarray(boxes)
    cxcywh = box_utils.xyxy_to_cxcywh(x)
    np.testing.assert_allclose(box_utils.cxcywh_to_xyxy(cxcywh), boxes, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cxcywh[:, 2], boxes[:, 2] - boxes[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cxcywh[:, 0], (boxes[:, 0] + boxes[:, 2]) / 2, rtol=1e-5)
    yxyx = box_utils.xyxy_to_yxyx(x)
    np.testing.assert_array_equal(np.asarray(yxyx)[:, [1, 0, 3, 2]], boxes.astype(yxyx.dtype))
    np.testing.assert_allclose(box_utils.yxyx_to_cxcywh(box_utils.cxcywh_to_yxyx(cxcywh)),
                               cxcywh, rtol=1e-6, atol=1e-6)
    assert type(box_utils.cxcywh_to_xyxy(cxcywh)) is type(x)


@pytest.mark.parametrize("module", [np, jnp])
def test_iou_and_giou_match_reference(module):
    rng = np.random.default_rng(1)
    a, b = random_xyxy(rng, 7), random_xyxy(rng, 5)
    # Adversarial pairs: identical, disjoint, nested, touching edges.
    a[0], b[0] = [0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.5]
    a[1], b[1] = [0.0, 0.0, 0.1, 0.1], [0.8, 0.8, 0.9, 0.9]
    a[2], b[2] = [0.0, 0.0, 1.0, 1.0], [0.4, 0.4, 0.6, 0.6]
    a[3], b[3] = [0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5]
    iou, _ = box_utils.box_iou(module.asarray(a), module.asarray(b), eps=0.0)
    giou = box_utils.generalized_box_iou(module.asarray(a), module.asarray(b), eps=0.0)
    for i, j in itertools.product(range(7), range(5)):
        ref_iou, ref_giou = reference_iou_giou(a[i], b[j])
        assert float(iou[i, j]) == pytest.approx(ref_iou, abs=1e-6)
        assert float(giou[i, j]) == pytest.approx(ref_giou, abs=1e-6)
    assert float(iou[0, 0]) == pytest.approx(1.0) and float(giou[0, 0]) == pytest.approx(1.0)
    assert float(iou[1, 1]) == 0.0 and float(giou[1, 1]) < 0.0
    assert float(iou[3, 3]) == 0.0 and float(giou[3, 3]) == pytest.approx(0.0, abs=1e-6)


def test_batched_shapes():
    boxes = jnp.asarray(random_xyxy(np.random.default_rng(2), 24).reshape(2, 12, 4))
    assert box_utils.generalized_box_iou(boxes[:, :5], boxes[:, 5:]).shape == (2, 5, 7)
