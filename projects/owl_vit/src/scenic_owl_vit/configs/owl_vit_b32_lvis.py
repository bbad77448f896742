r"""scenic-owl-vit train --config owl_vit_b32_lvis --workdir /tmp/owl_vit_b32_lvis \
    --config.init_from.checkpoint="$HF/clip-vit-base-patch32" \
    --config.tokenizer_path="$HF/clip-vit-base-patch32"

OWL-ViT B/32 (Minderer et al., ECCV 2022) trained on LVIS from CLIP, with the recipe of the
original Scenic config `scenic/projects/owl_vit/configs/clip_b32.py`.

NOT RUN HERE: this is a TPU/GPU-pod recipe (batch 256 at 768 px, 140k steps); the CPU
machine this project is developed on cannot train it. Only the config, the model's
parameter count (153,231,879: 88.3M image tower, 63.4M text tower) and the weight import
are tested (tests/test_configs.py).

Reference results (not reproduced): the original config's docstring gives LVIS AP 20.9,
APr 16.9; the released B/32 checkpoint scores LVIS AP 19.3, APr 16.9 (the original
README; that checkpoint was trained on Objects365 + Visual Genome, as in the paper).

Needs:
  - $HF/clip-vit-base-patch32: a Hugging Face `CLIPModel` folder (openai/clip-vit-base-
    patch32: config.json, model.safetensors or pytorch_model.bin, vocab.json, merges.txt),
    read by the 'hf_clip_for_owl_vit' init format (`scenic_owl_vit.init_formats`). The
    same folder is the CLIP BPE vocabulary (`tokenizer_path`; OpenAI's
    bpe_simple_vocab_16e6.txt.gz works too). Both paths are placeholders here: without
    them the run stops with a ConfigError before anything is written.
  - TFDS `lvis` (1.4.0) prepared in TFDS's data dir (or `--config.dataset_configs.data_dir`);
    it is read by the core's COCO-style detection pipeline (`dataset_name='coco'`,
    `tfds_name='lvis'`), which carries LVIS's federated category lists, so the loss is
    federated and evaluation is LVIS AP (APr / APc / APf, 300 detections per image).
    LVIS's 337 rare classes are removed from the training annotations and category lists
    (`exclude_train_labels='lvis_rare'`, the original's `remove_forbidden_labels`), so APr
    measures zero-shot detection, as the paper reports it.

Recipe (the original's): batch 256; 140,000 steps; input 768 px; Adam (b1 0.9, b2 0.999,
no weight decay); learning rate 5e-5 for the image tower and heads and 2e-6 for the text
tower (`optimizer.lr_multipliers`: 'clip/text/.*' x 0.04), both with 1,000 warmup steps
then cosine decay to 0; gradient clipping at global norm 1.0; Hungarian matching
('hungarian_cover_tpu_matcher'); sigmoid focal loss (alpha 0.3, gamma 2) with class, L1
and GIoU weights 1, 1, 1; class-logit bias initialised for a prior of 0.01 (the original's
`prior_prob`); at most 100 boxes per image; the heads start fresh (`init_from.reinit`),
both towers from CLIP (the image position embedding resampled from 7x7 to 24x24, the
text one cut to 16 tokens); training images are 1x1, 2x2 or 3x3 mosaics (probabilities
0.4, 0.3, 0.3; `dataset_configs.mosaic_sizes`, each image augmented at its tile's size).
Prompts: in training one random template per class and step
from `TRAINING_PROMPT_TEMPLATES` (the class name alone plus CLIP's 80 ImageNet
templates, the original's `add_random_prompts`); the original's evaluator averages the
logits of `EVAL_PROMPT_TEMPLATES` (CLIP's 7 best), as `scenic-owl-vit eval --workdir W
--config owl_vit_b32_lvis:eval` (with the same path overrides) does; training's own
evaluations average all 81 (the text tower runs on the 81 x 1,203 prompts once per
evaluation pass, `OwlViTDetectionModel.eval_constants`, and the logits are formed from
each class's mean normalised embedding).

Differences from the published recipe (what the core cannot do yet):
  - no per-image query sets: every step queries all 1,203 class names, with the federated
    loss (`federated_loss`) counting only each image's positives and negatives (LVIS's
    verified negatives topped up to 50 with random unannotated classes,
    `random_negatives`, our reading of the original's random negative labels);
    overlapping boxes (IoU > 0.9) are not merged;
  - gradients are clipped for the whole batch (`optimizer.grad_clip_norm`) and the loss
    normalised by the batch's box count, not per example: the core can do both per example
    (`--config.optimizer.per_example_clip_norm=1.0`: each example's loss normalised by its
    own boxes, its gradient clipped, then averaged; one gradient per example held on each
    device), not set here because its memory and speed at this size are unmeasured;
  - no stochastic depth in the towers (the original: 0.1 text, 0.2 image): the CLIP
    towers (`scenic_baselines.clip`) have none;
  - the original's random crop keeping >= 60% of the image, then resize-with-pad, is
    approximated by scale jitter of the longer side in [1.0, 1.3] and an S x S crop;
  - evaluation runs in the training loop every 10,000 steps (the original evaluates
    saved checkpoints with a separate LVIS evaluator).
"""

import math

import ml_collections

from scenic_owl_vit import init_formats
from scenic_owl_vit.model import VARIANTS

#: The original's `label_ops.CLIP_PAPER_PROMPT_TEMPLATES`: CLIP's 80 ImageNet templates
#: (openai/CLIP, notebooks/Prompt_Engineering_for_ImageNet.ipynb).
CLIP_PROMPT_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.",
    "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.",
    "a photo of a hard to see {}.", "a bright photo of a {}.", "a photo of a clean {}.",
    "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.",
    "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a painting of a {}.", "a pixelated photo of the {}.",
    "a sculpture of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.",
    "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.",
    "the origami {}.", "the {} in a video game.", "a sketch of a {}.",
    "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.",
    "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.",
    "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.",
    "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.",
    "a photo of the small {}.", "a photo of the weird {}.", "the cartoon {}.",
    "art of the {}.", "a drawing of the {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.",
    "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
)  # fmt: skip
#: Training draws one of these per class and step (the original's
#: `TRAINING_PROMPT_TEMPLATES`: the bare class name, then CLIP's 80).
TRAINING_PROMPT_TEMPLATES = ("{}", *CLIP_PROMPT_TEMPLATES)
#: The original evaluator's ensemble (`label_ops.CLIP_BEST_PROMPT_TEMPLATES`).
EVAL_PROMPT_TEMPLATES = (
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
)  # fmt: skip
#: The original's `prior_prob`: the class logits' shift starts at log(p / (1 - p)).
PRIOR_PROB = 0.01
IMAGE_LR, TEXT_LR = 5e-5, 2e-6
#: Parameters of the text tower (full match on '/'-joined paths; checked in the tests).
TEXT_TOWER = "clip/text/.*"
#: The Hugging Face CLIP folder (hub name openai/...) each variant starts from.
HF_CLIP = {
    "owl_vit_b32": "clip-vit-base-patch32",
    "owl_vit_b16": "clip-vit-base-patch16",
    "owl_vit_l14": "clip-vit-large-patch14",
}


def lvis_config(
    name: str,
    *,
    variant: str,
    image_size: int,
    num_training_steps: int,
    image_lr: float = IMAGE_LR,
    text_lr: float = TEXT_LR,
    templates: str | None = None,
) -> ml_collections.ConfigDict:
    """The LVIS training config shared by this file and its siblings: `variant` (one of
    `scenic_owl_vit.model.VARIANTS`) at `image_size`, initialised from a Hugging Face CLIP
    folder (placeholder path), with the original's optimiser, loss and prompts.
    `templates`: None (training's) or 'eval' (the original evaluator's ensemble)."""
    if templates not in (None, "train", "eval"):
        raise ValueError(f"templates must be 'train' or 'eval', got {templates!r}.")
    config = ml_collections.ConfigDict()
    config.experiment_name = name
    config.model_name = "owl_vit"
    config.model = ml_collections.ConfigDict(
        {
            "variant": variant,
            "logit_shift_bias_init": math.log(PRIOR_PROB / (1 - PRIOR_PROB)),
            # The pipeline's [-1, 1] pixels -> CLIP's mean / std, as the weights expect.
            "clip_pixels": True,
        }
    )
    config.tokenizer = "clip"
    config.tokenizer_path = None  # placeholder: --config.tokenizer_path=<CLIP vocabulary>
    config.prompt_templates = (
        EVAL_PROMPT_TEMPLATES if templates == "eval" else TRAINING_PROMPT_TEMPLATES
    )

    config.dataset_name = "coco"  # the core's COCO-style TFDS detection pipeline
    config.dataset_configs = ml_collections.ConfigDict(
        {
            "tfds_name": "lvis",
            "data_dir": None,
            "train_split": "train",
            "eval_split": "validation",
            "image_size": image_size,
            "max_boxes": 100,
            "min_scale": 1.0,
            "max_scale": 1.3,
            "flip": True,
            "shuffle_buffer": 1000,
            "exclude_train_labels": "lvis_rare",  # held out: APr is zero-shot
            "random_negatives": 50,  # negatives per training image, topped up at random
            # The original's mosaics: 1x1, 2x2 and 3x3 with probabilities 0.4, 0.3, 0.3.
            "mosaic_sizes": (1, 2, 3),
            "mosaic_weights": (0.4, 0.3, 0.3),
        }
    )

    # The criterion (core DetectionModel) with the original's settings.
    config.matcher = "hungarian_cover_tpu_matcher"
    config.class_loss = "sigmoid_focal"
    config.focal_alpha = 0.3
    config.focal_gamma = 2.0
    config.class_loss_coef = 1.0
    config.bbox_loss_coef = 1.0
    config.giou_loss_coef = 1.0
    config.federated_loss = True
    config.eval_metrics = "lvis"
    config.eval_top_k = 300

    config.rng_seed = 0
    config.batch_size = 256
    config.eval_batch_size = 64
    config.num_training_steps = num_training_steps
    config.optimizer = ml_collections.ConfigDict(
        {
            "name": "adam",
            "b1": 0.9,
            "b2": 0.999,
            "grad_clip_norm": 1.0,
            # The original's second schedule, for the text tower: the same warmup and
            # cosine shape, so a constant factor on the learning rate.
            "lr_multipliers": ((TEXT_TOWER, text_lr / image_lr),),
        }
    )
    config.lr_configs = ml_collections.ConfigDict(
        {
            "factors": "constant * linear_warmup * cosine_decay",
            "base_learning_rate": image_lr,
            "warmup_steps": 1000,
        }
    )
    objectness = (init_formats.OBJECTNESS_PATTERN,) if VARIANTS[variant]["objectness"] else ()
    config.init_from = ml_collections.ConfigDict(
        {
            # placeholder: --config.init_from.checkpoint=<Hugging Face CLIPModel folder>
            "checkpoint": f"/path/to/{HF_CLIP.get(variant, 'clip')}",
            "format": "hf_clip_for_owl_vit",
            # CLIP has no detection heads: they start fresh (every other parameter loads).
            "reinit": init_formats.HEAD_PATTERNS + objectness,
        }
    )
    config.log_summary_steps = 100
    config.log_eval_steps = 10_000
    config.checkpoint_steps = 2000
    return config


def get_config(templates: str | None = None) -> ml_collections.ConfigDict:
    return lvis_config(
        "owl_vit_b32_lvis",
        variant="owl_vit_b32",
        image_size=768,
        num_training_steps=140_000,
        templates=templates,
    )
