r"""scenic-owl-vit train --config owlv2_b16_finetune --workdir /tmp/owlv2_b16_finetune \
    --config.init_from.checkpoint="$OWL/owl2-b16-960-st-ngrams_c7e1b9a" \
    --config.tokenizer_path="$CLIP_VOCAB/bpe_simple_vocab_16e6.txt.gz"

OWLv2 B/16 (Minderer et al., NeurIPS 2023) fine-tuned on LVIS from the released
self-trained (OWL-ST) detector, at 960 px with the objectness head: the paper's "ST+FT"
step, starting from its Table 1 row 11 checkpoint.

NOT RUN HERE: a TPU/GPU-pod recipe (batch 256 at 960 px: 3,600 patch tokens an image) that
the CPU machine this project is developed on cannot train. Only the config, the model's
parameter count (154,966,792) and the weight import are tested (tests/test_configs.py).

Reference results (not reproduced; the original README, LVIS val): the starting checkpoint
owl2-b16-960-st-ngrams scores LVIS AP 26.5, APr 29.5; the original's own fine-tuned
owl2-b16-960-st-ngrams-ft-lvisbase scores AP 41.4, APr 36.2 (trained on LVIS *base*: the
rare classes' boxes removed, which this config cannot do, see below).

Needs:
  - $OWL/owl2-b16-960-st-ngrams_c7e1b9a: the original Scenic checkpoint (a Flax msgpack
    file from the original README), read by the 'owl_vit_original' init format; or a
    Hugging Face `Owlv2ForObjectDetection` folder (google/owlv2-base-patch16, read by
    'hf_owl_vit'; it holds vocab.json and merges.txt, so it is the tokenizer too). The
    format is detected (`init_from.format` unset). Hugging Face's port computes with its
    own conventions: add `--config.model.merged_norm_epsilon=1e-5
    --config.model.gelu_approximate=False` to keep them when starting from it.
  - the CLIP BPE vocabulary (`tokenizer_path`): OpenAI's bpe_simple_vocab_16e6.txt.gz or a
    Hugging Face CLIP / OWL-ViT folder. Both paths are placeholders here.
  - TFDS `lvis` prepared (the core's COCO-style pipeline, `tfds_name='lvis'`).

Hyper-parameters: the original publishes no OWLv2 training config (its
`owl_v2_clip_b16.py` only loads checkpoints) and the values of the paper's LVIS
fine-tuning could not be checked here. Chosen: the original's OWL-ViT fine-tuning config
(`clip_b32_finetune.py`): batch 256, 16,000 steps, Adam (0.9, 0.999), lr 5e-5 for the image
tower and heads and 2e-6 for the text tower, 1,000 warmup steps then cosine, clipping at
1.0; and the LVIS loss of `owl_vit_b32_lvis` (focal alpha 0.3, gamma 2, weights 1 / 1 / 1,
federated, 300 detections per image, the same prompt templates). Every parameter,
heads included, comes from the checkpoint (nothing is reinitialised).

Differences from the original OWLv2 recipe, besides those listed in `owl_vit_b32_lvis`
(no per-example clipping, stochastic depth; [-1, 1] pixels):
  - the objectness head is not trained: the core criterion has no objectness loss, so it
    keeps the checkpoint's weights (its inputs are stop-gradient, as the original's);
  - no token dropping or objectness-based instance selection during training.
"""

import ml_collections

from scenic_owl_vit.configs import owl_vit_b32_lvis


def get_config(templates: str | None = None) -> ml_collections.ConfigDict:
    config = owl_vit_b32_lvis.lvis_config(
        "owlv2_b16_finetune",
        variant="owlv2_b16",
        image_size=960,
        num_training_steps=16_000,
        templates=templates,
    )
    del config.model["logit_shift_bias_init"]  # the class head comes from the checkpoint
    config.init_from = ml_collections.ConfigDict(
        {
            # placeholder: --config.init_from.checkpoint=<OWLv2 checkpoint>
            "checkpoint": "/path/to/owl2-b16-960-st-ngrams_c7e1b9a",
        }
    )
    config.log_eval_steps = 4000
    return config
