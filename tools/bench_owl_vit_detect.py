"""Speed of `scenic-owl-vit detect`: seconds per image after compile, and its share of the
matmul peak, for the released OWL-ViT sizes.

    hatch run python tools/bench_owl_vit_detect.py [--variants owl_vit_b32 owl_vit_b16]
        [--queries 2] [--batch 1] [--repeats 5]

For each variant it builds the detector the `detect` verb uses
(`scenic_owl_vit.detect.OpenVocabularyDetector`, random parameters of the released shapes,
text queries already embedded, as the verb does once per run) and times:

  compile   the first call (tracing + XLA compilation of the jitted detection at the
            variant's input size: 768 px for B/32 and B/16, 840 for L/14);
  forward   the jitted detection alone (image tower, heads, top-k, boxes to pixels) on a
            prepared batch: best of `--repeats`;
  per image the verb's whole path for one 640x480 image: resize and pad (PIL), the
            forward, results back to the host: best of `--repeats`, divided by the batch.

FLOPs are XLA's cost analysis of the compiled detection; "of peak" is the forward's FLOP/s
over a 2048x2048 float32 matmul timed in the same process. The header names the machine,
JAX's version and the load average (a shared machine's neighbours slow everything alike).
"""

from __future__ import annotations

import argparse
import os
import time

from bench_resnet import machine  # tools/ is not a package: found through sys.path

DEFAULT_VARIANTS = ("owl_vit_b32", "owl_vit_b16")


def random_params(module, image_size: int, seed: int = 0):
    """Parameters of `module`'s shapes, N(0, 0.02^2) (scales 1), made in NumPy from the
    traced shapes (compiling `init` of a large model costs more than the benchmark)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((1, module.context_length), jnp.int32)
    shapes = jax.eval_shape(module.init, jax.random.key(0), images, tokens)["params"]
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if jax.tree_util.keystr(path).endswith("['scale']"):
            return np.ones(leaf.shape, np.float32)
        return (0.02 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def bench_variant(variant: str, num_queries: int, batch: int, repeats: int, peak: float):
    import jax
    import numpy as np

    from scenic.common_lib import debug_utils, detect_command
    from scenic_baselines import clip
    from scenic_owl_vit import detect
    from scenic_owl_vit import model as owl_model

    module = owl_model.owl_vit(variant)
    size = module.image_size
    loaded = detect.Loaded(module, {"params": random_params(module, size)}, None,
                           clip.CLIP_MEAN, clip.CLIP_STD)  # fmt: skip
    detector = detect.OpenVocabularyDetector(loaded, batch, top_k=100)
    rng = np.random.default_rng(0)
    queries = jax.numpy.asarray(rng.standard_normal((num_queries, module.embed_dim)), "float32")
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    images = [image] * batch

    start = time.perf_counter()
    detector(images, queries)
    compile_s = time.perf_counter() - start

    canvas, _, hw = detect_command.letterbox(image, size, clip.CLIP_MEAN, clip.CLIP_STD)
    sizes = np.array([hw] * batch, np.int32)
    originals = np.array([image.shape[:2]] * batch, np.int32)
    args = (loaded.variables, np.stack([canvas] * batch), queries, sizes, originals)
    flops = debug_utils.compiled_flops(detector._detect, *args) or float("nan")
    forward = best_of(lambda: jax.block_until_ready(detector._detect(*args)), repeats)
    whole = best_of(lambda: detector(images, queries), repeats)
    rate = flops / forward
    print(
        f"{variant:12s} {size:>5d} {batch:>5d} {compile_s:>9.1f} {forward / batch:>10.3f} "
        f"{whole / batch:>10.3f} {flops / batch / 1e9:>9.1f} {rate / 1e9:>8.1f} "
        f"{rate / peak:>8.1%}",
        flush=True,
    )


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    from scenic.common_lib import allocator

    allocator.reexec_with_huge_pages()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--queries", type=int, default=2, help="text queries per image")
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (best kept)")
    args = parser.parse_args()
    import jax

    from scenic.common_lib import debug_utils

    device = jax.devices()[0]
    where = machine() if jax.default_backend() == "cpu" else device.device_kind
    peak = debug_utils.peak_matmul_flops(size=2048, repeats=10)
    print(
        f"machine: {where}; device {device.device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}, allocator {allocator.describe()}"
    )
    print(f"peak (2048^2 float32 matmul, same process): {peak / 1e9:.0f} GFLOP/s")
    print(f"load average at the start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print(
        f"{'variant':12s} {'px':>5s} {'batch':>5s} {'compile s':>9s} {'fwd s/img':>10s} "
        f"{'all s/img':>10s} {'GFLOP/img':>9s} {'GFLOP/s':>8s} {'of peak':>8s}"
    )
    for variant in args.variants:
        bench_variant(variant, args.queries, args.batch, args.repeats, peak)
    print(
        f"\npeak again after the runs: {debug_utils.peak_matmul_flops(2048, 10) / 1e9:.0f} GFLOP/s"
    )
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
