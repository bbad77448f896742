"""CLIP (Radford et al., 2021): an image tower (a ViT, or a modified ResNet: `clip_resnet`)
and a text Transformer trained so that matching image-text pairs have the most similar
embeddings in a batch; the base of OWL-ViT.

The model, its contrastive loss and its zero-shot classifier. The ViT and text towers are
the core's pre-LN encoder (`scenic.model_lib.vit_encoder`) with OpenAI's conventions: QuickGELU
(`x * sigmoid(1.702 x)`), LayerNorm epsilon 1e-5, no bias in the patch embedding or the
projections, a LayerNorm (`ln_pre`) between the image tower's position embedding and its
blocks, a causal text tower pooled at the end-of-text (EOT) token. Hugging Face
`CLIPModel` folders load with `clip_weights.load_hf_clip`.

Parameters (OpenAI's names in brackets):

  visual/embedding/kernel              [p, p, 3, D]  patch convolution (conv1), no bias
  visual/cls                           [1, 1, D]     (class_embedding)
  visual/posembed_input/pos_embedding  [1, 1+N, D]   (positional_embedding)
  visual/ln_pre                                       (ln_pre)
  visual/Transformer/encoderblock_i/   the ViT block (transformer.resblocks.i)
  visual/Transformer/encoder_norm      on every token (ln_post)
  visual/projection/kernel             [D, E]        (proj)
  text/token_embedding/embedding       [V, W]        (token_embedding)
  text/posembed_input/pos_embedding    [1, 77, W]    (positional_embedding)
  text/Transformer/encoderblock_i/     causal blocks (transformer.resblocks.i)
  text/Transformer/encoder_norm        (ln_final)
  text/projection/kernel               [W, E]        (text_projection)
  logit_scale                          []            log of the similarity scale
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from scenic.model_lib import layers, vit_encoder
from scenic_baselines import clip_resnet

#: The MLP activations CLIP checkpoints use, by Hugging Face's `hidden_act` names: OpenAI's
#: QuickGELU, and the exact (erf) GELU of OpenCLIP's LAION models.
ACTIVATIONS: dict[str, Callable] = {
    "quick_gelu": layers.quick_gelu,
    "gelu": functools.partial(nn.gelu, approximate=False),
}

#: OpenAI's released models (`ViT-B/32`, `ViT-B/16`, `ViT-L/14`, `ViT-L/14@336px`), as in
#: the paper's Table 20 and Hugging Face's `openai/clip-vit-*` configs. Parameter counts
#: (Hugging Face's CLIPModel with these settings): 151,277,313 / 149,620,737 / 427,616,513
#: / 427,944,193.
#: CLIP's image normalisation (mean and std of [0, 1] RGB pixels), what its weights expect.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_TEXT_B = dict(text_width=512, text_layers=12, text_heads=8, text_mlp_dim=2048)
_TEXT_L = dict(text_width=768, text_layers=12, text_heads=12, text_mlp_dim=3072)
_VISION_B = dict(vision_width=768, vision_layers=12, vision_heads=12, vision_mlp_dim=3072)
_VISION_L = dict(vision_width=1024, vision_layers=24, vision_heads=16, vision_mlp_dim=4096)
VARIANTS: dict[str, dict] = {
    "vit_b32": dict(image_size=224, patch_size=32, embed_dim=512, **_VISION_B, **_TEXT_B),
    "vit_b16": dict(image_size=224, patch_size=16, embed_dim=512, **_VISION_B, **_TEXT_B),
    "vit_l14": dict(image_size=224, patch_size=14, embed_dim=768, **_VISION_L, **_TEXT_L),
    "vit_l14_336": dict(image_size=336, patch_size=14, embed_dim=768, **_VISION_L, **_TEXT_L),
}


def _resnet(image_size, layers, width, embed_dim, text_width):
    """OpenAI's ResNet CLIPs (OpenCLIP's RN*.json): the tower's heads are width * 32 // 64,
    the text tower's text_width // 64."""
    return dict(
        image_size=image_size, vision_layers=layers, vision_width=width,
        vision_heads=width * 32 // 64, embed_dim=embed_dim, text_width=text_width,
        text_heads=text_width // 64, text_layers=12, text_mlp_dim=4 * text_width,
    )  # fmt: skip


VARIANTS.update(
    rn50=_resnet(224, (3, 4, 6, 3), 64, 1024, 512),
    rn101=_resnet(224, (3, 4, 23, 3), 64, 512, 512),
    rn50x4=_resnet(288, (4, 6, 10, 6), 80, 640, 640),
    rn50x16=_resnet(384, (6, 8, 18, 8), 96, 768, 768),
    rn50x64=_resnet(448, (3, 15, 36, 10), 128, 1024, 1024),
)


def activation(name: str) -> Callable:
    if name not in ACTIVATIONS:
        raise ValueError(f"CLIP hidden_act must be one of {sorted(ACTIVATIONS)}, got {name!r}.")
    return ACTIVATIONS[name]


def eot_positions(tokens, eos_token_id: int | None = None):
    """The position `[B]` of each sequence's end-of-text token, where the text is pooled.

    None: the highest token id (OpenAI's rule; its EOT, 49407, is the last id of the
    vocabulary). An id: the first position holding it (Hugging Face's rule for configs whose
    `eos_token_id` is not the legacy 2, so that tokens added after the EOT id still work and
    padding with the EOT id itself is harmless). Both agree for OpenAI's tokenizer.
    """
    if eos_token_id is None:
        return jnp.argmax(tokens, axis=-1)
    return jnp.argmax(tokens == eos_token_id, axis=-1)


def _encoder(tower, causal: bool) -> vit_encoder.Encoder:
    """The core encoder with CLIP's block settings; its `encoder_norm` is ln_post /
    ln_final. The caller adds the position embedding (`posemb='none'`)."""
    return vit_encoder.Encoder(
        num_layers=tower.num_layers,
        mlp_dim=tower.mlp_dim,
        num_heads=tower.num_heads,
        posemb="none",
        remat=tower.remat,
        dtype=tower.dtype,
        block_kwargs={
            "activation": activation(tower.hidden_act),
            "layer_norm_epsilon": tower.layer_norm_epsilon,
            "causal": causal,
        },
        layer_norm_epsilon=tower.layer_norm_epsilon,
        name="Transformer",
    )


class ImageEncoder(nn.Module):
    """CLIP's ViT: `(embedding [B, E], tokens [B, 1+N, D])` of images `[B, H, W, 3]`.

    The tokens are the encoder's output after ln_post (class token first, then the patches
    row-major): what OWL-ViT builds its per-patch boxes and class embeddings from. The
    embedding is the class token's, projected (not normalised).
    """

    patch_size: int
    width: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    embed_dim: int
    hidden_act: str = "quick_gelu"
    layer_norm_epsilon: float = 1e-5
    remat: bool | str = False
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, images, train: bool = False):
        scale = self.width**-0.5  # OpenAI's initialisation of the embeddings and projection
        x = vit_encoder.PatchEmbedding(
            (self.patch_size, self.patch_size), self.width, self.dtype, use_bias=False,
            name="embedding",
        )(images)  # fmt: skip
        batch, grid_h, grid_w, width = x.shape
        x = vit_encoder.add_class_token(self, x.reshape(batch, grid_h * grid_w, width))
        x = layers.AddLearnedPositionEmbedding(
            nn.initializers.normal(scale), name="posembed_input"
        )(x)
        x = nn.LayerNorm(self.layer_norm_epsilon, dtype=self.dtype, name="ln_pre")(x)
        tokens = _encoder(self, causal=False)(x, train=train)
        projection = nn.Dense(
            self.embed_dim, use_bias=False, kernel_init=nn.initializers.normal(scale),
            dtype=self.dtype, name="projection",
        )  # fmt: skip
        return projection(tokens[:, 0]), tokens


class TextEncoder(nn.Module):
    """CLIP's causal text Transformer: `(embedding [B, E], tokens [B, L, W])` of token ids
    `[B, L]` (L up to `context_length`), pooled at each sequence's EOT token
    (`eot_positions`). The causal mask makes the pooled output independent of whatever
    follows the EOT token, so padding needs no mask."""

    vocab_size: int
    context_length: int
    width: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    embed_dim: int
    hidden_act: str = "quick_gelu"
    layer_norm_epsilon: float = 1e-5
    eos_token_id: int | None = None
    remat: bool | str = False
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, tokens, train: bool = False):
        x = nn.Embed(
            self.vocab_size, self.width, dtype=self.dtype,
            embedding_init=nn.initializers.normal(0.02), name="token_embedding",
        )(tokens)  # fmt: skip
        x = layers.AddLearnedPositionEmbedding(
            nn.initializers.normal(0.01), self.context_length, name="posembed_input"
        )(x)
        x = _encoder(self, causal=True)(x, train=train)
        pooled = jnp.take_along_axis(
            x, eot_positions(tokens, self.eos_token_id)[:, None, None], axis=1
        )[:, 0]
        projection = nn.Dense(
            self.embed_dim, use_bias=False, kernel_init=nn.initializers.normal(self.width**-0.5),
            dtype=self.dtype, name="projection",
        )  # fmt: skip
        return projection(pooled), x


def l2_normalize(x, axis: int = -1):
    """`x / ||x||` in float32 (as CLIP: no epsilon; an all-zero embedding has no direction)."""
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.linalg.norm(x, axis=axis, keepdims=True)


class CLIP(nn.Module):
    """CLIP: `__call__(images, tokens)` -> dict of `image_embeddings` `[B, E]` and
    `text_embeddings` `[T, E]` (L2-normalised, float32), `logits_per_image` `[B, T]`,
    `logits_per_text` `[T, B]` and `logit_scale` (the multiplier, not its log).

    Images are `[B, image_size, image_size, 3]` (NHWC, normalised as the checkpoint
    expects), tokens `[T, L]` int ids with L <= context_length. The defaults are ViT-B/32;
    `clip_model(variant)` builds the others (the ViTs and the ResNets RN50 ... RN50x64).

    Attributes:
      vision_layers: the ViT's depth, or a sequence of stage depths for OpenAI's modified
        ResNet (`clip_resnet`; `vision_width` is then its stem width, `patch_size` unused).
      hidden_act: 'quick_gelu' (OpenAI) or 'gelu' (exact; OpenCLIP's LAION models).
      layer_norm_epsilon: 1e-5, as OpenAI (PyTorch's default) and Hugging Face.
      eos_token_id: where text is pooled (`eot_positions`): None for the highest id.
      max_logit_scale: the similarity scale is `min(exp(logit_scale), max_logit_scale)`:
        CLIP clips it at 100 (OpenAI and OpenCLIP clamp the parameter after each step; here
        the forward pass clips, which gives the same logits); None: no clip (as Hugging
        Face's forward).
      remat: recompute each block's activations in the backward pass (see `vit_encoder`).

    Initialisation (for training from scratch) is OpenAI's for the embeddings and
    projections; the blocks keep the core's (Xavier), the class token starts at zero.
    """

    embed_dim: int = 512
    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int | Sequence[int] = 12
    vision_heads: int = 12
    vision_mlp_dim: int = 3072
    vocab_size: int = 49408
    context_length: int = 77
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    text_mlp_dim: int = 2048
    hidden_act: str = "quick_gelu"
    layer_norm_epsilon: float = 1e-5
    eos_token_id: int | None = None
    max_logit_scale: float | None = 100.0
    remat: bool | str = False
    dtype: jnp.dtype | None = None

    def setup(self):
        shared = dict(
            embed_dim=self.embed_dim, hidden_act=self.hidden_act, remat=self.remat,
            layer_norm_epsilon=self.layer_norm_epsilon, dtype=self.dtype,
        )  # fmt: skip
        if self.vision_is_resnet():
            self.visual = clip_resnet.ResNetImageEncoder(
                layers=tuple(self.vision_layers), width=self.vision_width,
                num_heads=self.vision_heads, embed_dim=self.embed_dim, dtype=self.dtype,
            )  # fmt: skip
        else:
            self.visual = ImageEncoder(
                patch_size=self.patch_size, width=self.vision_width,
                num_layers=self.vision_layers, num_heads=self.vision_heads,
                mlp_dim=self.vision_mlp_dim, **shared,
            )  # fmt: skip
        self.text = TextEncoder(
            vocab_size=self.vocab_size, context_length=self.context_length,
            width=self.text_width, num_layers=self.text_layers, num_heads=self.text_heads,
            mlp_dim=self.text_mlp_dim, eos_token_id=self.eos_token_id, **shared,
        )  # fmt: skip
        self.logit_scale = self.param(
            "logit_scale", nn.initializers.constant(math.log(1 / 0.07)), ()
        )

    def vision_is_resnet(self) -> bool:
        """A sequence of stage depths as `vision_layers` makes the image tower OpenAI's
        modified ResNet (as OpenAI's `build_model` decides); a number, the ViT."""
        return isinstance(self.vision_layers, Sequence)

    def encode_image(
        self, images, *, train: bool = False, normalize: bool = True, return_tokens: bool = False
    ):
        """Image embeddings `[B, E]` (L2-normalised unless `normalize=False`); with
        `return_tokens`, `(embeddings, tokens)`: every token after ln_post `[B, 1+N, D]`
        (ResNet towers: the last stage's feature map, `[B, h * w, C]`)."""
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(
                f"CLIP expects [B, {self.image_size}, {self.image_size}, C] images, got "
                f"{images.shape}: set image_size (and resize the position embedding)."
            )
        embeddings, tokens = self.visual(images, train)
        embeddings = l2_normalize(embeddings) if normalize else embeddings
        return (embeddings, tokens) if return_tokens else embeddings

    def encode_text(self, tokens, *, train: bool = False, normalize: bool = True):
        """Text embeddings `[T, E]` of token ids `[T, L]` (L2-normalised unless told not)."""
        embeddings, _ = self.text(tokens, train)
        return l2_normalize(embeddings) if normalize else embeddings

    def scale(self):
        """The similarity scale exp(logit_scale), clipped at `max_logit_scale`."""
        scale = jnp.exp(self.logit_scale.astype(jnp.float32))
        return scale if self.max_logit_scale is None else jnp.minimum(scale, self.max_logit_scale)

    def __call__(self, images, tokens, *, train: bool = False):
        image_embeddings = self.encode_image(images, train=train)
        text_embeddings = self.encode_text(tokens, train=train)
        scale = self.scale()
        logits_per_image = scale * image_embeddings @ text_embeddings.T
        return {
            "image_embeddings": image_embeddings,
            "text_embeddings": text_embeddings,
            "logits_per_image": logits_per_image,
            "logits_per_text": logits_per_image.T,
            "logit_scale": scale,
        }


def clip_model(variant: str = "vit_b32", **overrides) -> CLIP:
    """CLIP of one of VARIANTS, with any attribute overridden."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown CLIP variant {variant!r}; known: {', '.join(VARIANTS)}.")
    return CLIP(**{**VARIANTS[variant], **overrides})


def contrastive_loss(image_emb, text_emb, logit_scale, axis_name: str | None = None):
    """CLIP's symmetric cross-entropy: each image's text among all texts of the batch and
    each text's image among all images, averaged (the mean over examples of both).

    `image_emb`, `text_emb`: L2-normalised `[B, E]`, row i of each a pair. `logit_scale`:
    the multiplier of the cosine similarities (the model's `logit_scale` output), not its
    log. With `axis_name` (a pmap / shard_map axis) both are all-gathered over it first,
    so every device's examples are scored against the GLOBAL batch's negatives; the result
    is then the mean over this device's examples, and its mean over devices (which the
    trainer's gradient pmean takes) is the global batch's loss. Without it the batch is
    already global.
    """
    image_emb = jnp.asarray(image_emb, jnp.float32)
    text_emb = jnp.asarray(text_emb, jnp.float32)
    all_images, all_texts, offset = image_emb, text_emb, 0
    if axis_name is not None:
        all_images = jax.lax.all_gather(image_emb, axis_name, tiled=True)
        all_texts = jax.lax.all_gather(text_emb, axis_name, tiled=True)
        offset = jax.lax.axis_index(axis_name) * image_emb.shape[0]
    labels = offset + jnp.arange(image_emb.shape[0])

    def cross_entropy(logits):
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))

    per_image = cross_entropy(logit_scale * image_emb @ all_texts.T)
    per_text = cross_entropy(logit_scale * text_emb @ all_images.T)
    return 0.5 * (per_image + per_text)


def zero_shot_weights(
    encode_text_fn: Callable,
    class_names: Sequence[str],
    templates: Sequence[str | Callable[[str], str]],
    tokenize_fn: Callable,
):
    """Zero-shot classifier `[num_classes, E]`, as CLIP's ImageNet notebook builds it: for
    each class, its name in every template ('a photo of a {}.'; a callable is called with
    the name), tokenized (`tokenize_fn(list_of_texts)` -> ids `[T, L]`), encoded
    (`encode_text_fn(ids)` -> `[T, E]`), each embedding L2-normalised, their mean, and that
    mean normalised again. Averaging over templates ("prompt ensembling") gained CLIP ~3.5%
    ImageNet accuracy over one template."""
    rows = []
    for name in class_names:
        texts = [t(name) if callable(t) else t.format(name) for t in templates]
        embeddings = l2_normalize(encode_text_fn(tokenize_fn(texts)))
        rows.append(l2_normalize(embeddings.mean(axis=0)))
    return jnp.stack(rows)


def zero_shot_classify(image_embeddings, class_weights):
    """Cosine similarities `[B, num_classes]` of images to `zero_shot_weights`' classes
    (argmax: the predicted class; x100 and softmax: CLIP's class probabilities)."""
    return l2_normalize(image_embeddings) @ jnp.asarray(class_weights, jnp.float32).T
