"""The models this project registers: `config.model_name` -> base-model class."""

from __future__ import annotations

import dataclasses

import scenic_baselines.clip_weights  # registers 'hf_clip' and 'openai_clip' with init_from
import scenic_baselines.image_text_dataset
import scenic_baselines.vit_weights  # noqa: F401  (registers ViT weight formats with init_from)
from scenic_baselines import bit, clip_contrastive, detr, mixer, resnet, unet, vit, vit_hybrid


def _vit_fields() -> tuple[str, ...]:
    excluded = ("num_classes", "parent", "name")
    return tuple(f.name for f in dataclasses.fields(vit.ViT) if f.name not in excluded)


class ViTClassification(vit.ViTClassificationModel):
    @classmethod
    def model_config_keys(cls):
        return _vit_fields()


class ViTMultiLabelClassification(vit.ViTMultiLabelClassificationModel):
    @classmethod
    def model_config_keys(cls):
        return _vit_fields()


MODELS = {
    "vit_multilabel_classification": ViTMultiLabelClassification,
    "vit_classification": ViTClassification,
    # config.model: the constructor fields of resnet.ResNet (model_config_keys).
    "resnet_classification": resnet.ResNetClassificationModel,
    # config.model: the constructor fields of detr.DETR; the criterion's keys (matcher,
    # loss weights, eval_top_k, ...) are top-level, as for any DetectionModel.
    "detr": detr.DETRDetectionModel,
    # config.model: the constructor fields of mixer.Mixer (model_config_keys).
    "mixer_classification": mixer.MixerClassificationModel,
    "mixer_multilabel_classification": mixer.MixerMultiLabelClassificationModel,
    # config.model: the constructor fields of unet.UNet (model_config_keys).
    "unet_segmentation": unet.UNetSegmentationModel,
    # config.model: the constructor fields of bit.BiT / vit_hybrid.ViTHybrid; official BiT
    # and ViT-hybrid .npz files load through config.init_from (bit_weights).
    "bit_classification": bit.BiTClassificationModel,
    "vit_hybrid_classification": vit_hybrid.ViTHybridClassificationModel,
    # config.model: `variant` and the constructor fields of clip.CLIP; trained with CLIP's
    # contrastive loss, evaluated as a zero-shot classifier (clip_contrastive).
    "clip": clip_contrastive.CLIPContrastiveModel,
}


def get_models() -> dict[str, type]:
    return MODELS
