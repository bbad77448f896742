"""CLIP trained through the core trainer: its contrastive loss in training, zero-shot
classification in evaluation.

`CLIPContrastiveModel` (registered as 'clip') takes the core's classification batches:
`inputs` the images (or a dict with `image` and, optionally, `text_tokens` `[B, L]`: each
image's own caption) and `label` the class ids. Where the batch brings no captions, an
image's caption is its class name in a prompt template (`prompt_templates`, one drawn per
class and step from the 'dropout' rng, as OWL-ViT draws them): a labelled data set becomes
an image-text data set. The loss is `clip.contrastive_loss` over the global batch (each
device's embeddings scored against every device's); images of one class share a caption, so
the loss cannot reach 0 there (its floor is the log of the number of same-class captions).

Evaluation is CLIP's zero-shot classifier: each class's templates embedded, normalised and
averaged (`eval_constants`: once per evaluation pass), the logits `scale * image . class`,
with the classification metrics (accuracy, top-5, cross-entropy of those logits). On
image-caption batches (data set 'image_text') it is retrieval over the whole eval set:
`image_to_text_R@1` / `@5` and `text_to_image_R@1` / `@5` (`retrieval_recalls`).

Config (top level): `tokenizer` ('clip' or 'bytes', as OWL-ViT), `tokenizer_path`,
`prompt_templates` (default: the name alone), `class_names` (default: the data set's
`class_names`). `config.model`: `variant` (one of `clip.VARIANTS`, or None) and any
`clip.CLIP` attribute.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from scenic.common_lib.config_utils import ConfigError
from scenic.model_lib import model_utils
from scenic.model_lib.base_models.classification_model import ClassificationModel
from scenic_baselines import class_prompts, clip


class CaptionedCLIP(clip.CLIP):
    """`clip.CLIP` on classification or image-caption batches. `__call__(inputs, train)`:

    captions  (`inputs['text_tokens']` given, training or not) a dict: `image_embeddings`
              `[B, E]`, `text_embeddings` `[B, E]`, `class_embeddings` None, `logit_scale`;
    training  without captions, the same dict with `text_embeddings` None and
              `class_embeddings` `[C, E]` (one random template per class);
    eval      without captions, logits `[B, C]` against `class_queries`
              (`self.class_queries()`, the template-averaged zero-shot classifier;
              computed here when not given).
    """

    class_tokens: tuple | None = None  # [T, C, L] token ids of the class prompts

    def __call__(self, inputs, train: bool = False, class_queries=None):
        images = inputs["image"] if isinstance(inputs, dict) else inputs
        tokens = inputs.get("text_tokens") if isinstance(inputs, dict) else None
        image_embeddings = self.encode_image(images, train=train)
        if not train and tokens is None:
            queries = self.class_queries() if class_queries is None else class_queries
            return self.scale() * image_embeddings @ queries.T
        outputs = {"image_embeddings": image_embeddings, "logit_scale": self.scale()}
        if tokens is not None:
            outputs["text_embeddings"] = self.encode_text(tokens, train=train)
            outputs["class_embeddings"] = None
            return outputs
        class_tokens = self.checked_class_tokens()
        num_templates, num_classes = class_tokens.shape[:2]
        choice = jax.random.randint(self.make_rng("dropout"), (num_classes,), 0, num_templates)
        outputs["text_embeddings"] = None
        outputs["class_embeddings"] = self.encode_text(
            class_tokens[choice, jnp.arange(num_classes)], train=train
        )
        return outputs

    def class_queries(self):
        """`[C, E]`: CLIP's zero-shot classifier (`clip.zero_shot_weights`' arithmetic):
        each class's template embeddings normalised, averaged, normalised again."""
        class_tokens = self.checked_class_tokens()
        num_templates, num_classes, length = class_tokens.shape
        embeddings = self.encode_text(class_tokens.reshape(-1, length))
        embeddings = embeddings.reshape(num_templates, num_classes, -1).mean(axis=0)
        return clip.l2_normalize(embeddings)

    def checked_class_tokens(self):
        if self.class_tokens is None:
            raise ValueError(
                "CaptionedCLIP: no text_tokens in the inputs and no class names to caption with."
            )
        return jnp.asarray(self.class_tokens, jnp.int32)


class CLIPContrastiveModel(class_prompts.ClassPrompts, ClassificationModel):
    """CLIP's contrastive training and zero-shot evaluation (module docstring); the class
    prompts and the once-per-pass zero-shot classifier come from `ClassPrompts`."""

    config_keys = (*ClassificationModel.config_keys, *class_prompts.CONFIG_KEYS, "class_names")

    def build_flax_model(self):
        kwargs = clip_kwargs(self.config.model)
        names = self.config.get("class_names") or self.dataset_meta_data.get("class_names")
        num_classes = self.dataset_meta_data.get("num_classes")  # None: image-caption data
        if names and num_classes and len(names) != num_classes:
            raise ConfigError(
                f"class_names: {len(names)} names for a data set of {num_classes} classes."
            )
        tokens = self.class_prompt_tokens(
            list(names or ()),
            kwargs.get("vocab_size", clip.CLIP.vocab_size),
            kwargs.get("context_length", clip.CLIP.context_length),
        )
        return CaptionedCLIP(class_tokens=tokens, **kwargs)

    def loss_and_metrics(self, outputs, batch, model_params=None, axis_name=None):
        """CLIP's symmetric contrastive loss of the (image, caption) pairs, and two
        metrics: that loss, and `class_accuracy` (each image's nearest class prompt of this
        step is its label's; only without the batch's own captions)."""
        images = outputs["image_embeddings"]
        texts = outputs["text_embeddings"]
        classes = outputs["class_embeddings"]
        labels = None if classes is None else class_ids(batch["label"])
        if texts is None:
            texts = classes[labels]
        loss = clip.contrastive_loss(images, texts, outputs["logit_scale"], axis_name)
        metrics = {"contrastive_loss": model_utils.sum_and_normalizer(
            jnp.full(images.shape[:1], loss), None, axis_name)}  # fmt: skip
        if classes is not None:
            correct = (jnp.argmax(images @ classes.T, axis=-1) == labels).astype(jnp.float32)
            metrics["class_accuracy"] = model_utils.sum_and_normalizer(correct, None, axis_name)
        return loss + self.l2_term(model_params), metrics

    # Evaluation on image-caption batches (dict outputs): retrieval over the whole eval set.
    # On classification batches (logits): the classification metrics.

    def get_metrics(self, logits, batch, axis_name=None):
        return {} if isinstance(logits, dict) else super().get_metrics(logits, batch, axis_name)

    def eval_totals(self, logits, batch, axis_name=None):
        return {} if isinstance(logits, dict) else super().eval_totals(logits, batch, axis_name)

    def eval_examples(self, logits, batch):
        if isinstance(logits, dict):
            return {k: logits[k] for k in ("image_embeddings", "text_embeddings")}
        return super().eval_examples(logits, batch)

    def global_metrics(self, totals, examples):
        """Image-caption evaluation: recall@1 and @5 of retrieving each image's caption among
        all the eval set's captions (`image_to_text_R@k`) and each caption's image
        (`text_to_image_R@k`), by cosine similarity."""
        if "image_embeddings" not in examples:
            return super().global_metrics(totals, examples)
        return retrieval_recalls(examples["image_embeddings"], examples["text_embeddings"])

    @classmethod
    def model_config_keys(cls) -> tuple[str, ...]:
        return class_prompts.module_config_keys(CaptionedCLIP)

    @classmethod
    def check_config(cls, config: ml_collections.ConfigDict) -> None:
        clip_kwargs(config.model)


def retrieval_recalls(images, texts, ks=(1, 5)) -> dict[str, float]:
    """Recall@k both ways of paired embeddings `[N, E]` (pair i = row i), by dot product;
    a tie with the right item counts against it (ranked by how many score strictly more,
    plus ties)."""
    similarity = np.asarray(images, np.float64) @ np.asarray(texts, np.float64).T
    metrics = {}
    for name, scores in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        right = np.diag(scores)[:, None]
        others = scores >= right
        rank = others.sum(axis=1) - 1  # items scoring at least the right one, itself excluded
        for k in ks:
            metrics[f"{name}_R@{k}"] = float(np.mean(rank < k))
    return metrics


def class_ids(label):
    """Class ids `[B]` of integer labels or one-hot / soft labels `[B, C]`."""
    return label if label.ndim == 1 else jnp.argmax(label, axis=-1)


def clip_kwargs(model_config) -> dict:
    """`CaptionedCLIP` arguments of `config.model`: the variant's, then every other key; a
    dtype given as a string becomes a dtype."""
    settings = dict(model_config.to_dict() if model_config is not None else {})
    variant = settings.pop("variant", None)
    if variant is not None:
        if variant not in clip.VARIANTS:
            raise ConfigError(
                f"model.variant {variant!r} is not one of {', '.join(clip.VARIANTS)}."
            )
        settings = {**clip.VARIANTS[variant], **settings}
    if isinstance(settings.get("dtype"), str):
        settings["dtype"] = jnp.dtype(settings["dtype"])
    return settings
