"""RandAugment ops against PIL (ImageOps, ImageEnhance, Image.transform), plus the op draw.

Tolerances: the point and enhance ops must equal PIL exactly. Geometric ops sample the
same pixel as PIL's NEAREST except where a source coordinate falls within rounding error
of a pixel border (PIL rounds rotation matrices to 15 digits and may use 16.16 fixed
point); at most 1% of the pixels may differ (measured: 0 for shear / translate, <= 0.5%
for rotate on random images).
"""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
PIL = pytest.importorskip("PIL")
from PIL import Image, ImageEnhance, ImageOps  # noqa: E402

from scenic.dataset_lib import randaugment as ra  # noqa: E402


def random_images(seed):
    """Random, narrow-range, flat and two-valued images in 1 and 3 channels."""
    rng = np.random.default_rng(seed)
    images = []
    for channels in (1, 3):
        images.append(rng.integers(0, 256, (23, 31, channels), np.uint8))
        images.append(rng.integers(90, 141, (17, 12, channels), np.uint8))
        images.append(np.full((9, 11, channels), 77, np.uint8))
        images.append(rng.choice(np.array([3, 250], np.uint8), (13, 10, channels)))
    # One channel flat, the others not: per-channel ops must treat them separately.
    mixed = rng.integers(0, 256, (15, 14, 3), np.uint8)
    mixed[..., 1] = 40
    images.append(mixed)
    return images


def to_pil(x):
    return Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x)


def from_pil(image, channels):
    x = np.asarray(image)
    return x[..., None] if channels == 1 else x


def fill_for(x):
    return 128 if x.shape[-1] == 1 else (128, 128, 128)


POINT_OPS = {
    "autocontrast": (ra.autocontrast, ImageOps.autocontrast),
    "equalize": (ra.equalize, ImageOps.equalize),
    "solarize_0": (lambda x: ra.solarize(x, 0), lambda p: ImageOps.solarize(p, 0)),
    "solarize_100": (lambda x: ra.solarize(x, 100), lambda p: ImageOps.solarize(p, 100)),
    "solarize_256": (lambda x: ra.solarize(x, 256), lambda p: ImageOps.solarize(p, 256)),
    "posterize_1": (lambda x: ra.posterize(x, 1), lambda p: ImageOps.posterize(p, 1)),
    "posterize_3": (lambda x: ra.posterize(x, 3), lambda p: ImageOps.posterize(p, 3)),
    "posterize_8": (lambda x: ra.posterize(x, 8), lambda p: ImageOps.posterize(p, 8)),
}


@pytest.mark.parametrize("name", sorted(POINT_OPS))
def test_point_ops_equal_pil(name):
    ours, theirs = POINT_OPS[name]
    for x in random_images(0):
        expected = from_pil(theirs(to_pil(x)), x.shape[-1])
        np.testing.assert_array_equal(ours(tf.constant(x)).numpy(), expected, err_msg=name)


ENHANCE_OPS = {
    "color": (ra.color, ImageEnhance.Color),
    "contrast": (ra.contrast, ImageEnhance.Contrast),
    "brightness": (ra.brightness, ImageEnhance.Brightness),
    "sharpness": (ra.sharpness, ImageEnhance.Sharpness),
}


@pytest.mark.parametrize("name", sorted(ENHANCE_OPS))
def test_enhance_ops_equal_pil(name):
    ours, enhancer = ENHANCE_OPS[name]
    rng = np.random.default_rng(1)
    factors = [0.0, 0.1, 1.0, 1.9, 2.7, rng.uniform(0, 2)]
    for x in random_images(1):
        for factor in factors:
            expected = from_pil(enhancer(to_pil(x)).enhance(factor), x.shape[-1])
            got = ours(tf.constant(x), factor).numpy()
            np.testing.assert_array_equal(got, expected, err_msg=f"{name} {factor}")


def test_luma_is_pils_greyscale():
    x = np.random.default_rng(2).integers(0, 256, (20, 30, 3), np.uint8)
    expected = np.asarray(to_pil(x).convert("L"))
    np.testing.assert_array_equal(ra.luma(tf.constant(x)).numpy()[..., 0], expected)


def pil_affine(matrix):
    return lambda p, fill: p.transform(p.size, Image.AFFINE, matrix, Image.NEAREST, fillcolor=fill)


def geometric_cases(rng):
    degrees, shear, shift = rng.uniform(-45, 45), rng.uniform(-0.5, 0.5), rng.uniform(-12, 12)
    return {
        "rotate": (
            lambda x: ra.rotate(x, degrees),
            lambda p, fill: p.rotate(degrees, Image.NEAREST, fillcolor=fill),
        ),
        "shear_x": (lambda x: ra.shear_x(x, shear), pil_affine((1, shear, 0, 0, 1, 0))),
        "shear_y": (lambda x: ra.shear_y(x, shear), pil_affine((1, 0, 0, shear, 1, 0))),
        "translate_x": (lambda x: ra.translate_x(x, shift), pil_affine((1, 0, shift, 0, 1, 0))),
        "translate_y": (lambda x: ra.translate_y(x, shift), pil_affine((1, 0, 0, 0, 1, shift))),
    }


@pytest.mark.parametrize("name", ["rotate", "shear_x", "shear_y", "translate_x", "translate_y"])
def test_geometric_ops_match_pil_nearest(name):
    rng = np.random.default_rng(3)
    for trial in range(6):
        channels = (1, 3)[trial % 2]
        x = rng.integers(0, 256, (int(rng.integers(24, 40)), int(rng.integers(24, 40)), channels))
        x = x.astype(np.uint8)
        ours, theirs = geometric_cases(rng)[name]
        expected = from_pil(theirs(to_pil(x), fill_for(x)), channels)
        got = ours(tf.constant(x)).numpy()
        differing = (got != expected).any(-1).mean()
        assert differing <= 0.01, f"{name}: {differing:.2%} of pixels differ from PIL"


def test_geometric_fill_and_direction():
    x = np.arange(1, 26, dtype=np.uint8).reshape(5, 5, 1)
    moved = ra.translate_x(tf.constant(x), 2.0).numpy()[..., 0]
    np.testing.assert_array_equal(moved[:, :3], x[:, 2:, 0])  # content moves left
    assert (moved[:, 3:] == ra.FILL_VALUE).all()
    quarter = ra.rotate(tf.constant(x), 90.0).numpy()[..., 0]
    np.testing.assert_array_equal(quarter, np.rot90(x[..., 0]))  # counter-clockwise


def test_magnitude_zero_leaves_every_op_but_the_histogram_ones_unchanged():
    x = tf.constant(random_images(4)[0])
    for name, fn in zip(ra.OP_NAMES, ra.op_functions(0.0)):
        for sign in (-1.0, 1.0):
            out = fn(x, tf.constant(sign)).numpy()
            if name in ("autocontrast", "equalize"):
                continue
            np.testing.assert_array_equal(out, x.numpy(), err_msg=name)


def test_magnitude_maps_to_documented_strengths():
    x = tf.constant(np.random.default_rng(5).integers(0, 256, (20, 30, 3), np.uint8))
    ops = dict(zip(ra.OP_NAMES, ra.op_functions(10.0)))
    plus, minus = tf.constant(1.0), tf.constant(-1.0)

    def same(a, b):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    same(ops["rotate"](x, minus), ra.rotate(x, -30.0))
    same(ops["shear_x"](x, plus), ra.shear_x(x, 0.3))
    same(ops["translate_x"](x, plus), ra.translate_x(x, 0.45 * 30))
    same(ops["translate_y"](x, minus), ra.translate_y(x, -0.45 * 20))
    same(ops["color"](x, minus), ra.color(x, 0.1))
    same(ops["sharpness"](x, plus), ra.sharpness(x, 1.9))
    same(ops["solarize"](x, plus), ra.solarize(x, 0))
    same(ops["posterize"](x, plus), ra.posterize(x, 4))
    at5 = dict(zip(ra.OP_NAMES, ra.op_functions(5.0)))
    same(at5["solarize"](x, plus), ra.solarize(x, 128))
    same(at5["posterize"](x, plus), ra.posterize(x, 6))
    at30 = dict(zip(ra.OP_NAMES, ra.op_functions(30.0)))
    same(at30["posterize"](x, plus), ra.posterize(x, 1))
    same(at30["contrast"](x, minus), ra.contrast(x, 0.0))


def test_randaugment_is_the_drawn_ops_in_sequence_and_deterministic():
    x = tf.constant(np.random.default_rng(6).integers(0, 256, (16, 16, 3), np.uint8))
    functions = ra.op_functions(9.0)
    for s in range(8):
        seed = tf.constant([7, s], tf.int64)
        got = ra.randaugment(x, seed, num_layers=3, magnitude=9.0).numpy()
        np.testing.assert_array_equal(got, ra.randaugment(x, seed, 3, 9.0).numpy())
        ops, signs = ra.layer_choices(seed, 3)
        expected = x
        for op, sign in zip(ops.numpy(), signs.numpy()):
            expected = functions[op](expected, tf.constant(sign))
        np.testing.assert_array_equal(got, expected.numpy())


def test_different_seeds_draw_every_op_and_both_signs():
    ops, signs = zip(*(ra.layer_choices(tf.constant([0, s]), 2) for s in range(100)))
    ops, signs = np.concatenate(ops), np.concatenate(signs)
    assert set(ops.tolist()) == set(range(len(ra.OP_NAMES)))
    assert set(signs.tolist()) == {-1.0, 1.0}
    counts = np.bincount(ops, minlength=14)
    assert counts.min() >= 4 and counts.max() <= 28  # 200 uniform draws: mean 14.3


def test_randaugment_in_tf_data_matches_eager():
    images = np.random.default_rng(8).integers(0, 256, (4, 12, 12, 1), np.uint8)
    seeds = np.stack([np.full(4, 3), np.arange(4)], 1).astype(np.int64)
    ds = tf.data.Dataset.from_tensor_slices((images, seeds))
    ds = ds.map(lambda x, s: ra.randaugment(x, s, num_layers=2, magnitude=15.0))
    graph = np.stack(list(ds.as_numpy_iterator()))
    eager = np.stack([ra.randaugment(x, s, 2, 15.0).numpy() for x, s in zip(images, seeds)])
    np.testing.assert_array_equal(graph, eager)
    assert graph.dtype == np.uint8 and graph.shape == images.shape
    assert len({g.tobytes() for g in graph}) > 1


def test_bad_settings_are_named():
    x = tf.zeros([4, 4, 3], tf.uint8)
    with pytest.raises(ValueError, match="magnitude"):
        ra.randaugment(x, [0, 0], 2, 31.0)
    with pytest.raises(ValueError, match="num_layers"):
        ra.randaugment(x, [0, 0], -1, 10.0)
    with pytest.raises(ValueError, match="uint8"):
        ra.randaugment(tf.zeros([4, 4, 3]), [0, 0], 2, 10.0)
    with pytest.raises(ValueError, match="uint8"):
        ra.randaugment(tf.zeros([4, 4, 2], tf.uint8), [0, 0], 2, 10.0)
    np.testing.assert_array_equal(ra.randaugment(x + 5, [0, 0], 0, 10.0).numpy(), x.numpy() + 5)
