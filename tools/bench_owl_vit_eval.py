"""OWL-ViT evaluation with many class names: what computing the class-name queries once per
evaluation pass (`OwlViTDetectionModel.eval_constants`) saves over running the text tower in
every eval batch.

    hatch run python tools/bench_owl_vit_eval.py [--variant owl_vit_b32] [--classes 1203]
        [--templates 7] [--batch 1] [--repeats 2]

Builds the detection model of `--variant` (random parameters of the released shapes, the
byte tokenizer, `--classes` made-up names x `--templates` prompt templates: LVIS's 1,203
names and the original evaluator's 7 templates by default) and times, after compiling each:

  per batch, before  the module's eval forward, text tower included (what every eval batch
                     cost before the queries were computed once per pass);
  per batch, after   `eval_apply` with the queries given (what every batch costs now);
  once per pass      `eval_constants` (the text tower on templates x classes).

Best of `--repeats` calls each; the largest logit difference of the two paths is printed.
"""

from __future__ import annotations

import argparse
import os
import time

from bench_owl_vit_detect import best_of, random_params  # tools/ is on sys.path
from bench_resnet import machine


def timed(fn, repeats: int, *args):
    """(output, first call's seconds: compile + run, best of `repeats` later calls)."""
    import jax

    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    return out, first, best_of(lambda: jax.block_until_ready(fn(*args)), repeats)


def main() -> None:
    from scenic.common_lib import allocator

    allocator.reexec_with_huge_pages()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--variant", default="owl_vit_b32")
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--templates", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1, help="images per eval batch")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls (best kept)")
    args = parser.parse_args()
    for name in ("classes", "templates", "batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")

    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    from scenic_owl_vit import detection_model
    from scenic_owl_vit import model as owl_model

    size = owl_model.VARIANTS[args.variant]["image_size"]
    templates = ["{}"] + [f"template {k} {{}}" for k in range(1, args.templates)]
    config = ml_collections.ConfigDict(
        {"model": {"variant": args.variant}, "tokenizer": "bytes", "prompt_templates": templates}
    )
    meta = {
        "num_classes": args.classes,
        "class_names": [f"class {i}" for i in range(args.classes)],
        "input_shape": {"image": (-1, size, size, 3), "padding_mask": (-1, size, size)},
    }
    model = detection_model.OwlViTDetectionModel(config, meta)
    variables = {"params": random_params(owl_model.owl_vit(args.variant), size)}
    rng = np.random.default_rng(0)
    inputs = {"image": jnp.asarray(rng.normal(size=(args.batch, size, size, 3)), jnp.float32)}

    print(f"machine: {machine()}; jax {jax.__version__}, allocator {allocator.describe()}")
    print(f"load average at the start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(
        f"{args.variant} at {size} px, {args.classes} classes x {args.templates} templates, "
        f"batch {args.batch}\n"
    )
    before = jax.jit(lambda v, x: model.flax_model.apply(v, x))
    out_before, *before_s = timed(before, args.repeats, variables, inputs)
    queries, *constants_s = timed(jax.jit(model.eval_constants), args.repeats, variables)
    out_after, *after_s = timed(jax.jit(model.eval_apply), args.repeats, variables, inputs, queries)
    rows = {"per batch, before": before_s, "per batch, after": after_s,
            "once per pass": constants_s}  # fmt: skip
    print(f"{'':18s} {'first call s':>12s} {'best s':>8s}")
    for name in ("per batch, before", "per batch, after", "once per pass"):
        first, best = rows[name]
        print(f"{name:18s} {first:>12.2f} {best:>8.2f}")
    ratio = rows["per batch, before"][1] / rows["per batch, after"][1]
    diff = float(jnp.abs(out_before["pred_logits"] - out_after["pred_logits"]).max())
    print(f"\nper-batch time before / after: {ratio:.1f}x; max |logit difference| {diff:.2e}")
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
