"""OWL-ViT trained and evaluated through the core's set-prediction criterion.

`OwlViTDetectionModel` is the core `DetectionModel` (Hungarian matching, sigmoid focal class
loss, L1 and GIoU; COCO / LVIS evaluation) with OWL-ViT as its network: nothing of the
criterion is copied here. What is OWL-ViT's own is where the classes come from: the data
set's class names (`class_names` meta data) are turned into text queries with prompt
templates, and the class logits are the image tokens' similarities to those queries.

  training    each step draws one template per class (the original's random prompts), so
              the text tower sees every template over time;
  evaluation  the logits of every template are averaged (an ensemble of prompts); the
              class names' queries are computed once per evaluation pass
              (`eval_constants`), not once per batch;
  any time    a batch may bring its own queries: `inputs['text_tokens']` `[Q, L]` or
              `[B, Q, L]` (ids from the model's tokenizer) replace the class names; the
              `detect` verb uses them for free-text queries.

Config (top level, besides `DetectionModel`'s keys; OWL-ViT's defaults differ from DETR's:
sigmoid focal loss with alpha 0.3, class, L1 and GIoU weights 1, as the original's configs):
  tokenizer         'clip' (CLIP's BPE; `tokenizer_path` names the vocabulary: OpenAI's
                    bpe_simple_vocab_16e6.txt.gz or a Hugging Face folder) or 'bytes'
                    (UTF-8 bytes: no file needed; for towers trained from scratch).
  prompt_templates  templates with one '{}' for the class name (default: the name alone).
`config.model`: `variant` (one of `model.VARIANTS`, or None for the class defaults) and any
`model.OWLViTDetector` attribute, overriding the variant's.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from scenic.common_lib.config_utils import ConfigError
from scenic.model_lib.base_models import detection_model
from scenic.model_lib.base_models.detection_model import DetectionModel
from scenic_baselines import class_prompts
from scenic_baselines.clip import CLIP_MEAN, CLIP_STD
from scenic_owl_vit import model as owl_model

#: OWL-ViT's criterion settings (the original's configs) where they differ from DETR's.
OWL_VIT_DEFAULTS = {
    "class_loss": "sigmoid_focal",
    "focal_alpha": 0.3,
    "focal_gamma": 2.0,
    "class_loss_coef": 1.0,
    "bbox_loss_coef": 1.0,
    "giou_loss_coef": 1.0,
}


class OWLViTDetector(owl_model.OWLViT):
    """`model.OWLViT` on the core's detection batches: `__call__(inputs, train)` with
    `inputs` the images `[B, S, S, 3]` or a dict with `image` (a `padding_mask` is not needed:
    the pipeline's padding is part of the image, as the original pads) and optionally
    `text_tokens`. Without `text_tokens` the queries are `class_tokens` `[T, C, L]` (T
    prompt templates of the C class names): one random template per class in training
    (from the 'dropout' rng), all T averaged at evaluation."""

    class_tokens: tuple | None = None
    # Inputs come as the core's detection pipeline makes them, pixels in [-1, 1]; True
    # converts them to CLIP's mean / std normalisation, which CLIP's weights expect.
    clip_pixels: bool = False

    def __call__(self, inputs, train: bool = False, class_queries=None):
        """`class_queries`: `self.class_queries()` computed beforehand (evaluation computes
        them once per pass); without them they are computed here."""
        images = inputs["image"] if isinstance(inputs, dict) else inputs
        if self.clip_pixels:
            images = to_clip_pixels(images)
        tokens = inputs.get("text_tokens") if isinstance(inputs, dict) else None
        if tokens is not None:
            return super().__call__(images, tokens, train=train)
        if class_queries is None:
            class_tokens = self.checked_class_tokens()
            num_templates, num_classes = class_tokens.shape[:2]
            if train and num_templates > 1:
                choice = jax.random.randint(
                    self.make_rng("dropout"), (num_classes,), 0, num_templates
                )
                return super().__call__(images, class_tokens[choice, jnp.arange(num_classes)],
                                        train=train)  # fmt: skip
            class_queries = self.class_queries(train)
        features = self.image_features(images, train)
        return self.heads(features, class_queries, queries_normalized=True)

    def class_queries(self, train: bool = False):
        """`[C, E]`: each class name's query, the mean of its T templates' normalised text
        embeddings. The logits averaged over templates are the logits of this mean (the
        class head is linear in the normalised query before its shift and scale): one
        `[B, N, C]` product instead of T of them."""
        class_tokens = self.checked_class_tokens()
        num_templates, num_classes = class_tokens.shape[:2]
        queries = self.text_embeddings(class_tokens.reshape(-1, class_tokens.shape[-1]), train)
        return owl_model.normalize(queries).reshape(num_templates, num_classes, -1).mean(0)

    def checked_class_tokens(self):
        if self.class_tokens is None:
            raise ValueError("OWLViTDetector: no text_tokens in the inputs and no class_tokens.")
        return jnp.asarray(self.class_tokens, jnp.int32)  # [T, C, L]


def to_clip_pixels(images):
    """Pixels in [-1, 1] -> CLIP's normalisation ((x - mean) / std of [0, 1] pixels)."""
    mean = jnp.asarray(CLIP_MEAN, images.dtype)
    std = jnp.asarray(CLIP_STD, images.dtype)
    return ((images + 1.0) / 2.0 - mean) / std


class OwlViTDetectionModel(class_prompts.ClassPrompts, DetectionModel):
    """OWL-ViT (v1 or v2) through the core `DetectionModel` criterion and evaluation; the
    class prompts and their once-per-pass queries come from `ClassPrompts`."""

    config_keys = (*DetectionModel.config_keys, *class_prompts.CONFIG_KEYS)

    def option(self, key: str):
        value = self.config.get(key)
        if value is not None:
            return value
        return OWL_VIT_DEFAULTS.get(key, detection_model.DEFAULTS.get(key))

    def __init__(self, config, dataset_meta_data):
        super().__init__(config, dataset_meta_data)
        if self.softmax:
            raise ConfigError(
                "OWL-ViT has no background class: class_loss must be 'sigmoid_focal'."
            )

    def build_flax_model(self):
        kwargs = owl_kwargs(self.config.model)
        tokens = self.class_prompt_tokens(
            self.dataset_meta_data.get("class_names"),
            kwargs["vocab_size"],
            kwargs["context_length"],
        )
        return OWLViTDetector(class_tokens=tokens, **kwargs)

    def tokenize(self, texts) -> np.ndarray:
        """`[Q, L]` token ids of free-text queries, at the text tower's context length."""
        return self.tokenizer.tokenize(list(texts), self.flax_model.context_length)

    @classmethod
    def model_config_keys(cls) -> tuple[str, ...]:
        return class_prompts.module_config_keys(OWLViTDetector)

    @classmethod
    def check_config(cls, config: ml_collections.ConfigDict) -> None:
        owl_kwargs(config.model)


def owl_kwargs(model_config) -> dict:
    """`OWLViTDetector` arguments of `config.model`: the variant's (original conventions),
    then every other key; a dtype given as a string becomes a dtype."""
    settings = dict(model_config.to_dict() if model_config is not None else {})
    variant = settings.pop("variant", None)
    if variant is not None:
        if variant not in owl_model.VARIANTS:
            raise ConfigError(
                f"model.variant {variant!r} is not one of {', '.join(owl_model.VARIANTS)}."
            )
        base = owl_model.owl_vit(variant)
        fields = [f.name for f in dataclasses.fields(owl_model.OWLViT)
                  if f.name not in ("parent", "name")]  # fmt: skip
        settings = {**{name: getattr(base, name) for name in fields}, **settings}
    if isinstance(settings.get("dtype"), str):
        settings["dtype"] = jnp.dtype(settings["dtype"])
    return settings
