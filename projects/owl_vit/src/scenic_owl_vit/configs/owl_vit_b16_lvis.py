r"""scenic-owl-vit train --config owl_vit_b16_lvis --workdir /tmp/owl_vit_b16_lvis \
    --config.init_from.checkpoint="$HF/clip-vit-base-patch16" \
    --config.tokenizer_path="$HF/clip-vit-base-patch16"

OWL-ViT B/16 (Minderer et al., ECCV 2022) trained on LVIS from CLIP, with the recipe of the
original Scenic config `scenic/projects/owl_vit/configs/clip_b16.py`: the B/32 recipe
(`owl_vit_b32_lvis`, whose docstring lists the recipe, the prompts and every difference
from the original) with ViT-B/16 towers, 48 x 48 = 2,304 patch tokens per 768 px image.

NOT RUN HERE: a TPU/GPU-pod recipe (batch 256 at 768 px, 140k steps) that the CPU machine
this project is developed on cannot train. Only the config, the model's parameter count
(152,789,511) and the weight import are tested (tests/test_configs.py).

Reference result (not reproduced): the released B/16 checkpoint scores LVIS AP 20.8, APr
17.1 (the original README; trained on Objects365 + Visual Genome, as in the paper; the
original config states no result of its own).

Needs $HF/clip-vit-base-patch16, a Hugging Face `CLIPModel` folder
(openai/clip-vit-base-patch16, with vocab.json and merges.txt: it is also the tokenizer),
and TFDS `lvis` prepared; both paths are placeholders that the command above sets.
Recipe: batch 256, 140,000 steps, Adam (0.9, 0.999), lr 5e-5 (image tower and heads) and
2e-6 (text tower), 1,000 warmup steps then cosine, clipping at 1.0, focal alpha 0.3,
gamma 2, class / L1 / GIoU weights 1 / 1 / 1, federated loss, 300 detections per image.
Differences from the original: as listed in `owl_vit_b32_lvis` (no
per-example clipping or stochastic depth; [-1, 1] pixels). LVIS rare classes are held out
of training, as the original does.
"""

import ml_collections

from scenic_owl_vit.configs import owl_vit_b32_lvis


def get_config(templates: str | None = None) -> ml_collections.ConfigDict:
    return owl_vit_b32_lvis.lvis_config(
        "owl_vit_b16_lvis",
        variant="owl_vit_b16",
        image_size=768,
        num_training_steps=140_000,
        templates=templates,
    )
