"""Shared detection post-processing against NumPy references: class probabilities (softmax
with a no-object class, sigmoid), top-k over boxes x classes (ties included), and boxes
back to original pixels through the canvas padding (edges, zero area, eval padding)."""

import jax
import numpy as np
import pytest

from scenic.model_lib import detection_postprocess as post


def reference_probabilities(logits, softmax):
    logits = np.asarray(logits, np.float64)
    if softmax:
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True))[..., :-1]
    return 1.0 / (1.0 + np.exp(-logits))


def reference_top_k(probs, boxes, k):
    """Loops: every (query, class) pair, sorted by score (stable, query-major order)."""
    out_scores, out_labels, out_boxes = [], [], []
    for image_probs, image_boxes in zip(probs, boxes):
        pairs = [
            (float(image_probs[q, c]), q, c)
            for q in range(image_probs.shape[0])
            for c in range(image_probs.shape[1])
        ]
        order = sorted(range(len(pairs)), key=lambda i: -pairs[i][0])[:k]  # sorted is stable
        out_scores.append([pairs[i][0] for i in order])
        out_labels.append([pairs[i][2] for i in order])
        out_boxes.append([image_boxes[pairs[i][1]] for i in order])
    return np.array(out_scores), np.array(out_labels), np.array(out_boxes)


def logits_case(case, rng, batch=3, queries=7, classes=5):
    if case == "ties":  # few distinct values: many equal probabilities within an image
        return rng.integers(-1, 2, (batch, queries, classes)).astype(np.float32)
    if case == "saturated":  # probabilities of exactly 0 and 1 in float32
        return rng.choice([-200.0, 0.0, 200.0], (batch, queries, classes)).astype(np.float32)
    return rng.normal(size=(batch, queries, classes)).astype(np.float32) * 3


@pytest.mark.parametrize("softmax", [True, False], ids=["softmax", "sigmoid"])
@pytest.mark.parametrize("case", ["random", "ties", "saturated"])
def test_top_k_matches_the_numpy_reference(softmax, case):
    rng = np.random.default_rng(0)
    logits = logits_case(case, rng)
    boxes = rng.uniform(0, 1, (*logits.shape[:2], 4)).astype(np.float32)
    probs = np.asarray(post.class_probabilities(logits, softmax))
    np.testing.assert_allclose(probs, reference_probabilities(logits, softmax), atol=1e-6)
    for k in (1, 10, probs.shape[1] * probs.shape[2], 1000):
        scores, labels, top_boxes = map(
            np.asarray, post.top_k_detections(logits, boxes, k, softmax)
        )
        # Selection on the device's own probabilities: exact, ties in query-major order.
        expected = reference_top_k(probs, boxes, k)
        assert scores.shape == (3, min(k, probs.shape[1] * probs.shape[2]))
        np.testing.assert_array_equal(scores, expected[0])
        np.testing.assert_array_equal(labels, expected[1])
        np.testing.assert_array_equal(top_boxes, expected[2])
    if softmax:  # the no-object class is never reported
        assert labels.max() < logits.shape[-1] - 1


def test_top_k_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="pred_boxes"):
        post.top_k_detections(np.zeros((2, 3, 4)), np.zeros((2, 4, 4)), 5, softmax=True)
    with pytest.raises(ValueError, match="no object"):
        post.class_probabilities(np.zeros((2, 3, 1)), softmax=True)


def reference_pixels(boxes, canvas, size, orig):
    """Per box, in float64: cxcywh * canvas * orig / size per axis, clipped to the image."""
    out = np.zeros(boxes.shape, np.float64)
    for b in range(boxes.shape[0]):
        sy = canvas[0] * orig[b, 0] / max(size[b, 0], 1)
        sx = canvas[1] * orig[b, 1] / max(size[b, 1], 1)
        for i in range(boxes.shape[1]):
            cx, cy, w, h = boxes[b, i].astype(np.float64)
            x0, y0, x1, y1 = (
                (cx - w / 2) * sx,
                (cy - h / 2) * sy,
                (cx + w / 2) * sx,
                (cy + h / 2) * sy,
            )
            out[b, i] = [
                min(max(x0, 0), orig[b, 1]),
                min(max(y0, 0), orig[b, 0]),
                min(max(x1, 0), orig[b, 1]),
                min(max(y1, 0), orig[b, 0]),
            ]
    return out


@pytest.mark.parametrize("canvas", [(64, 64), (48, 80)])
def test_boxes_to_original_pixels_matches_the_reference(canvas):
    rng = np.random.default_rng(1)
    batch, num = 5, 9
    orig = rng.integers(10, 700, (batch, 2))
    # The image inside the canvas: its longer side fills the canvas (as the eval pipeline).
    scale = np.min(np.asarray(canvas)[None] / orig, axis=1, keepdims=True)
    size = np.maximum(np.round(orig * scale), 1).astype(np.int32)
    size[-1] = 0  # an eval padding example
    boxes = np.concatenate(
        [rng.uniform(-0.1, 1.1, (batch, num, 2)), rng.uniform(0, 0.6, (batch, num, 2))], -1
    ).astype(np.float32)
    boxes[:, 0] = [0.5, 0.5, 1.0, 1.0]  # the whole canvas: clipped to the image
    boxes[:, 1] = [0.3, 0.4, 0.0, 0.0]  # zero area
    image_frac = size[:, ::-1] / np.asarray(canvas[::-1])  # (w, h) of the image in the canvas
    boxes[:, 2, :2] = image_frac / 2  # exactly the image
    boxes[:, 2, 2:] = image_frac
    fn = jax.jit(post.boxes_to_original_pixels, static_argnums=1)
    pixels = np.asarray(fn(boxes, canvas, size, orig))
    expected = reference_pixels(boxes, canvas, size, orig)
    np.testing.assert_allclose(pixels, expected, rtol=1e-5, atol=1e-3)
    assert np.isfinite(pixels).all()
    real = slice(0, batch - 1)
    full = np.stack([np.zeros(batch), np.zeros(batch), orig[:, 1], orig[:, 0]], -1)
    np.testing.assert_allclose(pixels[real, 0], full[real], rtol=1e-6)
    np.testing.assert_allclose(pixels[real, 2], full[real], rtol=1e-5, atol=1e-3)
    assert (pixels[:, 1, 2] == pixels[:, 1, 0]).all() and (pixels[:, 1, 3] == pixels[:, 1, 1]).all()
    assert (pixels[..., [0, 2]] <= orig[:, None, 1:2]).all()
    assert (pixels[..., [1, 3]] <= orig[:, None, 0:1]).all() and (pixels >= 0).all()


def test_pixels_round_trip_through_the_pipelines_normalisation():
    """A pixel box, normalised as `detection_dataset.pad_to_canvas` does (relative to the
    image, then scaled by image size / canvas), comes back to the same pixels."""
    rng = np.random.default_rng(2)
    canvas = 96
    orig = np.array([[480, 640], [375, 500], [1000, 90]])
    size = np.round(orig * canvas / orig.max(1, keepdims=True)).astype(np.int32)
    x0 = rng.uniform(0, orig[:, 1:2] * 0.5, (3, 4))
    y0 = rng.uniform(0, orig[:, 0:1] * 0.5, (3, 4))
    x1 = x0 + rng.uniform(1, orig[:, 1:2] * 0.5, (3, 4))
    y1 = y0 + rng.uniform(1, orig[:, 0:1] * 0.5, (3, 4))
    truth = np.stack([x0, y0, x1, y1], -1)
    rel = truth / np.stack([orig[:, 1], orig[:, 0]] * 2, -1)[:, None]
    frac = np.stack([size[:, 1], size[:, 0]] * 2, -1)[:, None] / canvas
    xyxy = rel * frac
    cxcywh = np.concatenate(
        [(xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2]], -1
    )
    pixels = post.boxes_to_original_pixels(cxcywh.astype(np.float32), canvas, size, orig)
    np.testing.assert_allclose(np.asarray(pixels), truth, atol=2e-3 * orig.max())
