"""RandAugment (Cubuk et al. 2019) on uint8 images, as TensorFlow ops for tf.data maps.

Each of `num_layers` layers applies one of the paper's 14 ops, drawn uniformly; geometric
and enhance ops get a random sign. All randomness comes from a stateless seed, so an
example's augmentation is a fixed function of (seed, image): resume- and host-safe.

Magnitude scale (the one big_vision's and timm's RandAugment use, `_MAX_LEVEL = 10`):
`magnitude / 10` scales every op linearly from the identity at 0 to the largest value of
AutoAugment's ranges at 10; values up to 30 (the range searched in the paper, e.g. M=28
for EfficientNet-B7) extrapolate, clipped to each op's domain. At magnitude m, s = m / 10:

  rotate       +-30 * s degrees        shear_x/y      +-0.3 * s
  translate_x  +-0.45 * s * width      translate_y    +-0.45 * s * height
  color, contrast, brightness, sharpness: factor max(0, 1 +- 0.9 * s)
  solarize     threshold max(0, 256 - int(256 * s))   (pixels >= threshold are inverted)
  posterize    keep max(1, 8 - int(4 * s)) bits
  identity, autocontrast, equalize: no magnitude

Every strength grows with the magnitude (timm's "increasing" variant; the original TF
code's solarize and posterize weaken as the level grows). Pixels moved in from outside a
geometric op's image are grey (128), as in big_vision and timm; sampling is nearest.

Each op reproduces its PIL counterpart (ImageOps, ImageEnhance, Image.transform with
NEAREST): core/tests/test_randaugment.py compares them on random images.
"""

from __future__ import annotations

import functools
import math

MAX_MAGNITUDE = 30.0
FILL_VALUE = 128
OP_NAMES = (
    "identity",
    "autocontrast",
    "equalize",
    "rotate",
    "solarize",
    "color",
    "posterize",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)


def _tf():
    import tensorflow as tf

    return tf


def _to_uint8(values):
    """Float pixel values -> uint8 as PIL's blend stores them: clipped, then truncated."""
    tf = _tf()
    return tf.cast(tf.clip_by_value(tf.floor(values), 0.0, 255.0), tf.uint8)


def blend(degenerate, image, factor):
    """PIL's `Image.blend(degenerate, image, factor)` in float32, as its C code computes it."""
    tf = _tf()
    degenerate = tf.cast(degenerate, tf.float32)
    return _to_uint8(
        degenerate + tf.cast(factor, tf.float32) * (tf.cast(image, tf.float32) - degenerate)
    )


def luma(image):
    """[H, W, 1] int32 luma: PIL's fixed-point `convert("L")` (ITU-R 601-2) for RGB input."""
    tf = _tf()
    x = tf.cast(image, tf.int32)
    if image.shape[-1] == 1:
        return x
    weighted = x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000
    return tf.bitwise.right_shift(weighted, 16)[..., None]


def identity(image):
    return image


def autocontrast(image):
    """`ImageOps.autocontrast`: stretch each channel to [0, 255]; flat channels unchanged."""
    tf = _tf()
    x = tf.cast(image, tf.float64)
    lo = tf.reduce_min(x, axis=[0, 1])
    hi = tf.reduce_max(x, axis=[0, 1])
    flat = hi <= lo
    scale = 255.0 / tf.where(flat, tf.ones_like(hi), hi - lo)
    stretched = tf.clip_by_value(tf.floor(x * scale + -lo * scale), 0.0, 255.0)
    return tf.cast(tf.where(flat, x, stretched), tf.uint8)


def equalize(image):
    """`ImageOps.equalize`: per-channel histogram equalisation with PIL's lookup table."""
    tf = _tf()

    def channel(values):
        values = tf.cast(values, tf.int32)
        histogram = tf.math.bincount(tf.reshape(values, [-1]), minlength=256, maxlength=256)
        last = tf.gather(histogram, tf.reduce_max(values))  # the last non-empty bin
        step = (tf.reduce_sum(histogram) - last) // 255
        safe_step = tf.maximum(step, 1)
        exclusive_cumsum = tf.cumsum(histogram, exclusive=True)
        lut = tf.clip_by_value((safe_step // 2 + exclusive_cumsum) // safe_step, 0, 255)
        return tf.where(step > 0, tf.gather(lut, values), values)

    channels = [channel(image[..., c]) for c in range(image.shape[-1])]
    return tf.cast(tf.stack(channels, axis=-1), tf.uint8)


def solarize(image, threshold):
    """`ImageOps.solarize`: invert every pixel >= `threshold` (0..256)."""
    tf = _tf()
    return tf.where(tf.cast(image, tf.int32) >= threshold, 255 - image, image)


def posterize(image, bits):
    """`ImageOps.posterize`: keep the `bits` (1..8) most significant bits."""
    tf = _tf()
    mask = tf.constant((0xFF << (8 - bits)) & 0xFF, tf.uint8)
    return tf.bitwise.bitwise_and(image, mask)


def color(image, factor):
    """`ImageEnhance.Color`: blend with the greyscale image (0 grey, 1 unchanged)."""
    tf = _tf()
    grey = tf.cast(luma(image), tf.uint8)
    return blend(tf.broadcast_to(grey, tf.shape(image)), image, factor)


def contrast(image, factor):
    """`ImageEnhance.Contrast`: blend with a flat image of the rounded mean luma."""
    tf = _tf()
    mean = tf.reduce_mean(tf.cast(luma(image), tf.float64))
    degenerate = tf.fill(tf.shape(image), tf.floor(mean + 0.5))
    return blend(degenerate, image, factor)


def brightness(image, factor):
    """`ImageEnhance.Brightness`: blend with black."""
    tf = _tf()
    return blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
    """`ImageEnhance.Sharpness`: blend with PIL's SMOOTH filter (border pixels kept)."""
    tf = _tf()
    x = tf.cast(image, tf.float32)
    side = tf.constant(1 / 13, tf.float32)
    centre = tf.constant(5 / 13, tf.float32)

    def row(rows, middle):  # PIL's KERNEL1x3, summed in its order
        return rows[:, :-2] * side + rows[:, 1:-1] * middle + rows[:, 2:] * side

    total = row(x[2:], side) + row(x[1:-1], centre) + row(x[:-2], side)
    smooth = tf.cast(tf.floor(tf.clip_by_value(total, 0.0, 255.0) + 0.5), tf.uint8)
    smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    interior = (rows > 0) & (rows < height - 1) & (cols > 0) & (cols < width - 1)
    degenerate = tf.where(interior[..., None], smooth, image)
    return blend(degenerate, image, factor)


def affine(image, matrix, fill=FILL_VALUE):
    """`Image.transform(size, AFFINE, matrix, NEAREST, fillcolor=fill)`.

    Output pixel centre (x, y) samples the input at (a x + b y + c, d x + e y + f), for
    `matrix` = (a, b, c, d, e, f) in pixel units with centres at +0.5, as PIL defines it.
    """
    tf = _tf()
    a, b, c, d, e, f = (tf.cast(v, tf.float64) for v in matrix)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    ys = tf.cast(tf.range(height), tf.float64)[:, None] + 0.5
    xs = tf.cast(tf.range(width), tf.float64)[None, :] + 0.5
    src_x = tf.cast(tf.floor(a * xs + b * ys + c), tf.int32)
    src_y = tf.cast(tf.floor(d * xs + e * ys + f), tf.int32)
    inside = (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)
    src = tf.stack(
        [tf.clip_by_value(src_y, 0, height - 1), tf.clip_by_value(src_x, 0, width - 1)], -1
    )
    moved = tf.gather_nd(image, src)
    return tf.where(inside[..., None], moved, tf.constant(fill, image.dtype))


def rotate(image, degrees, fill=FILL_VALUE):
    """`Image.rotate(degrees, NEAREST, fillcolor=fill)`: counter-clockwise about the centre."""
    tf = _tf()
    angle = -tf.cast(degrees, tf.float64) * (math.pi / 180)
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx = tf.cast(tf.shape(image)[1], tf.float64) / 2
    cy = tf.cast(tf.shape(image)[0], tf.float64) / 2
    c = cos * -cx + sin * -cy + cx
    f = -sin * -cx + cos * -cy + cy
    return affine(image, (cos, sin, c, -sin, cos, f), fill)


def shear_x(image, factor, fill=FILL_VALUE):
    return affine(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0), fill)


def shear_y(image, factor, fill=FILL_VALUE):
    return affine(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0), fill)


def translate_x(image, pixels, fill=FILL_VALUE):
    """Moves the content left by `pixels` (PIL's affine offset convention)."""
    return affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), fill)


def translate_y(image, pixels, fill=FILL_VALUE):
    return affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), fill)


def check_settings(num_layers: int, magnitude: float) -> None:
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 0:
        raise ValueError(f"randaugment num_layers must be an integer >= 0, got {num_layers!r}.")
    if not 0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(
            f"randaugment magnitude must be in [0, {MAX_MAGNITUDE:g}], got {magnitude!r}."
        )


def op_functions(magnitude: float):
    """The 14 ops as `fn(image, sign) -> image` at `magnitude`, in `OP_NAMES` order."""
    tf = _tf()
    s = magnitude / 10.0

    def enhance(fn):
        return lambda image, sign: fn(image, tf.maximum(0.0, 1.0 + sign * 0.9 * s))

    def size(image, axis):
        return tf.cast(tf.shape(image)[axis], tf.float64)

    threshold = max(0, 256 - int(256 * s))
    bits = max(1, 8 - int(4 * s))
    table = {
        "identity": lambda image, sign: image,
        "autocontrast": lambda image, sign: autocontrast(image),
        "equalize": lambda image, sign: equalize(image),
        "rotate": lambda image, sign: rotate(image, sign * 30.0 * s),
        "solarize": lambda image, sign: solarize(image, threshold),
        "color": enhance(color),
        "posterize": lambda image, sign: posterize(image, bits),
        "contrast": enhance(contrast),
        "brightness": enhance(brightness),
        "sharpness": enhance(sharpness),
        "shear_x": lambda image, sign: shear_x(image, tf.cast(sign, tf.float64) * 0.3 * s),
        "shear_y": lambda image, sign: shear_y(image, tf.cast(sign, tf.float64) * 0.3 * s),
        "translate_x": lambda image, sign: translate_x(
            image, tf.cast(sign, tf.float64) * 0.45 * s * size(image, 1)
        ),
        "translate_y": lambda image, sign: translate_y(
            image, tf.cast(sign, tf.float64) * 0.45 * s * size(image, 0)
        ),
    }
    return [table[name] for name in OP_NAMES]


def layer_choices(seed, num_layers: int):
    """(op indices [num_layers] int32, signs [num_layers] float32 of +-1) drawn from `seed`."""
    tf = _tf()
    seed = tf.cast(seed, tf.int64)
    ops_seed, signs_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    ops = tf.random.stateless_uniform(
        [num_layers], ops_seed, minval=0, maxval=len(OP_NAMES), dtype=tf.int32
    )
    coins = tf.random.stateless_uniform([num_layers], signs_seed)
    return ops, tf.where(coins < 0.5, -1.0, 1.0)


def randaugment(image, seed, num_layers: int = 2, magnitude: float = 10.0):
    """Applies `num_layers` random ops at `magnitude` to a uint8 [H, W, C] image (C = 1 or 3).

    `seed` is a shape-[2] integer tensor for `tf.random.stateless_*`: the same seed and image
    give the same output.
    """
    tf = _tf()
    check_settings(num_layers, magnitude)
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8 or image.shape.rank != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(
            f"randaugment takes uint8 [H, W, 1 or 3] images, got {image.dtype.name} {image.shape}."
        )
    if num_layers == 0:
        return image
    # Nothing here needs autograph; skipping its conversion makes tf.data tracing ~2x faster.
    return tf.autograph.experimental.do_not_convert(_apply_layers)(
        image, seed, num_layers, magnitude
    )


def _apply_layers(image, seed, num_layers, magnitude):
    tf = _tf()
    ops, signs = layer_choices(seed, num_layers)
    functions = op_functions(magnitude)

    def layer(index, image):  # one switch over the 14 ops, traced once for all layers
        branches = [functools.partial(fn, image, signs[index]) for fn in functions]
        return index + 1, tf.ensure_shape(tf.switch_case(ops[index], branches), image.shape)

    _, image = tf.while_loop(lambda index, _: index < num_layers, layer, (0, image))
    return image
