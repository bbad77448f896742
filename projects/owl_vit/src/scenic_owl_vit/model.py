"""OWL-ViT (Minderer et al., 2022) and OWLv2 (Minderer et al., 2023): open-vocabulary
detection on CLIP's towers (`scenic_baselines.clip`).

    model = owl_vit("owl_vit_b32")                    # or weights.load_hf_owl_vit(folder)
    out = model.apply({"params": params}, images, text_tokens)   # images [B, H, W, 3]
    out["pred_logits"]   # [B, N, Q]  one logit per patch token and query
    out["pred_boxes"]    # [B, N, 4]  cxcywh in [0, 1] of the (padded) input image

The image tower is CLIP's ViT without its pooling or projection: every token after ln_post.
The patch tokens (class token dropped) are multiplied by the class token and normalised by a
LayerNorm (the "merged-token" LayerNorm); each of the N = (size / patch)^2 resulting tokens
predicts one box and one class embedding:

  box head     a 3-layer MLP (GELU) -> 4 numbers, plus a fixed bias from the token's place
               on the patch grid (the inverse sigmoid of the grid cell's lower-right corner
               (x, y) = ((j+1)/w, (i+1)/h) and of the cell size (1/w, 1/h); both the original
               and Hugging Face call it `normalized_grid_corner_coordinates`), then a sigmoid:
               boxes cxcywh in [0, 1].
  class head   a Dense projection to the text embedding size (`class_embeddings`);
               logits = cos(image token, query) (both divided by ||.|| + 1e-6), then a
               per-token learned shift and scale: `(logits + shift) * (elu(scale) + 1)`,
               with shift and scale Dense(1) layers on the image tokens. Padded queries
               get `padded_query_logit`.
  objectness   OWLv2 only (`objectness=True`): the same MLP as the box head with one output,
               on stop-gradient image tokens (`objectness_logits` [B, N]).

Queries are either text (the CLIP text tower's pooled, projected embedding of token ids
`[Q, L]` or `[B, Q, L]`; a query whose first token is 0 is padding) or image-conditioned
(`embed_image_query`: the class embedding of one token of a query image, chosen as Hugging
Face's `image_guided_detection` chooses it; `image_guided_detection` runs both steps).

Conventions where the original (big_vision / Scenic JAX code) and Hugging Face's port
differ, set explicitly by each importer (`weights.load_hf_owl_vit` sets Hugging Face's):

  attribute               original                    Hugging Face
  merged_norm_epsilon     1e-6 (Flax's default)       the vision config's layer_norm_eps
                                                      (1e-5)
  gelu_approximate        True (tanh, `nn.gelu`)      False (exact erf, `torch.nn.GELU()`)
  padded_query_logit      -1e6                        float32 min (-3.4e38)
  image padding           0.5 (grey) bottom/right to  0.0 (OWLv2's image processor pads
  (preprocessing, not     a square, before resizing   with 0; OWL-ViT v1's processor
  the model)                                          resizes without padding)

Text pooling is at the highest token id in both (OWL-ViT's tokenizer's end-of-text id is the
vocabulary's last), whatever the config's `eos_token_id` (`eos_token_id=None` here).

Outputs are a dict the core's `DetectionModel` criterion reads (`pred_logits`, `pred_boxes`
cxcywh) plus `class_embeddings` [B, N, E] (L2-normalised when there are queries, as
projected when not: both implementations' rule) and, for OWLv2,
`objectness_logits` [B, N].
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scenic.model_lib import box_utils
from scenic_baselines import clip

#: The released models: the CLIP variant and the input size (pixels, square, after padding).
#: OWL-ViT v1: B/32 and B/16 at 768, L/14 at 840; OWLv2: B/16 at 960, L/14 at 1008.
VARIANTS: dict[str, dict] = {
    "owl_vit_b32": dict(clip_variant="vit_b32", image_size=768, objectness=False),
    "owl_vit_b16": dict(clip_variant="vit_b16", image_size=768, objectness=False),
    "owl_vit_l14": dict(clip_variant="vit_l14", image_size=840, objectness=False),
    "owlv2_b16": dict(clip_variant="vit_b16", image_size=960, objectness=True),
    "owlv2_l14": dict(clip_variant="vit_l14", image_size=1008, objectness=True),
}
#: The original's conventions (see the module docstring); `weights.HF_CONVENTIONS` are
#: Hugging Face's.
ORIGINAL_CONVENTIONS = dict(merged_norm_epsilon=1e-6, gelu_approximate=True,
                            padded_query_logit=-1e6)  # fmt: skip
#: The value the original pads images with to a square (in [0, 1] pixels, before the CLIP
#: normalisation); Hugging Face's OWLv2 image processor pads with 0.0.
ORIGINAL_IMAGE_PAD_VALUE = 0.5
#: Added to the norms when the class head L2-normalises (both implementations).
NORM_EPSILON = 1e-6


def box_bias(grid_h: int, grid_w: int) -> np.ndarray:
    """`[grid_h * grid_w, 4]`: the inverse sigmoid of each token's grid-corner (x, y) and of
    the cell size (w, h), row-major over the grid, as both implementations compute it."""
    xx, yy = np.meshgrid(np.arange(1, grid_w + 1, dtype=np.float32) / grid_w,
                         np.arange(1, grid_h + 1, dtype=np.float32) / grid_h)  # fmt: skip
    xy = np.clip(np.stack([xx, yy], axis=-1).reshape(-1, 2), 0.0, 1.0)
    wh = np.broadcast_to(np.array([1.0 / grid_w, 1.0 / grid_h], np.float32), xy.shape)

    def logit(x):
        return np.log(x + 1e-4) - np.log1p(-x + 1e-4)

    return np.concatenate([logit(xy), logit(wh)], axis=-1).astype(np.float32)


def normalize(x):
    """`x / (||x|| + 1e-6)` in float32: an all-zero (padded) embedding stays zero."""
    x = jnp.asarray(x, jnp.float32)
    return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + NORM_EPSILON)


class MLPHead(nn.Module):
    """Dense(D) -> GELU -> Dense(D) -> GELU -> Dense(out_dim), D the input width."""

    out_dim: int
    gelu_approximate: bool = True
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x):
        gelu = functools.partial(nn.gelu, approximate=self.gelu_approximate)
        width = x.shape[-1]
        x = gelu(nn.Dense(width, dtype=self.dtype, name="dense0")(x))
        x = gelu(nn.Dense(width, dtype=self.dtype, name="dense1")(x))
        return nn.Dense(self.out_dim, dtype=self.dtype, name="dense2")(x)


class ClassHead(nn.Module):
    """`(logits [B, N, Q] or None, class_embeddings [B, N, E])` of image tokens `[B, N, D]`
    and query embeddings `[B, Q, E]`. With queries the class embeddings are returned
    L2-normalised, without (None) as projected: as the original and Hugging Face do."""

    embed_dim: int
    padded_query_logit: float = -1e6
    logit_shift_bias_init: float = 0.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, query_embeddings=None, query_mask=None, queries_normalized=False):
        class_embeddings = nn.Dense(self.embed_dim, dtype=self.dtype, name="dense0")(x)
        shift_init = nn.initializers.constant(self.logit_shift_bias_init)
        shift = nn.Dense(1, dtype=self.dtype, name="logit_shift", bias_init=shift_init)(x)
        scale = nn.Dense(1, dtype=self.dtype, name="logit_scale")(x)
        if query_embeddings is None:
            return None, class_embeddings
        class_embeddings = normalize(class_embeddings)  # returned normalised, as both do
        if not queries_normalized:
            query_embeddings = normalize(query_embeddings)
        if query_embeddings.ndim == 2:  # [Q, E] shared by the batch
            logits = jnp.einsum("...nd,qd->...nq", class_embeddings, query_embeddings)
        else:
            logits = jnp.einsum("...nd,...qd->...nq", class_embeddings, query_embeddings)
        logits = (logits + shift) * (nn.elu(scale) + 1.0)
        if query_mask is not None:
            logits = jnp.where(query_mask[..., None, :] > 0, logits, self.padded_query_logit)
        return logits.astype(jnp.float32), class_embeddings


class OWLViT(nn.Module):
    """OWL-ViT (v1) or OWLv2 (`objectness=True`) on CLIP's towers.

    `__call__(images, text_tokens=None, *, query_embeddings=None, query_mask=None)`: images
    `[B, image_size, image_size, 3]` (CLIP-normalised, padded to a square); the queries as
    text token ids (`[Q, L]` shared by the batch, or `[B, Q, L]`; the query mask is then
    `tokens[..., 0] > 0`) or as embeddings `[Q, E]` / `[B, Q, E]` (the mask: any non-zero
    entry, unless `query_mask` is given). Without queries, `pred_logits` is left out.

    The CLIP attributes are `clip.CLIP`'s (defaults: ViT-B/32 with OWL-ViT's 16-token text
    context); the conventions are documented in the module docstring (defaults: the
    original's).
    """

    embed_dim: int = 512
    image_size: int = 768
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_mlp_dim: int = 3072
    vocab_size: int = 49408
    context_length: int = 16
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    text_mlp_dim: int = 2048
    hidden_act: str = "quick_gelu"
    layer_norm_epsilon: float = 1e-5
    eos_token_id: int | None = None
    objectness: bool = False
    merged_norm_epsilon: float = 1e-6
    gelu_approximate: bool = True
    padded_query_logit: float = -1e6
    # Initial bias of the per-token logit shift, for training from scratch: -4.6 starts
    # every logit near sigmoid^-1(0.01), the focal loss's usual prior (RetinaNet).
    logit_shift_bias_init: float = 0.0
    dtype: jnp.dtype | None = None

    def setup(self):
        self.clip = clip.CLIP(
            embed_dim=self.embed_dim, image_size=self.image_size, patch_size=self.patch_size,
            vision_width=self.vision_width, vision_layers=self.vision_layers,
            vision_heads=self.vision_heads, vision_mlp_dim=self.vision_mlp_dim,
            vocab_size=self.vocab_size, context_length=self.context_length,
            text_width=self.text_width, text_layers=self.text_layers,
            text_heads=self.text_heads, text_mlp_dim=self.text_mlp_dim,
            hidden_act=self.hidden_act, layer_norm_epsilon=self.layer_norm_epsilon,
            eos_token_id=self.eos_token_id, dtype=self.dtype,
        )  # fmt: skip
        self.merged_norm = nn.LayerNorm(self.merged_norm_epsilon, dtype=self.dtype)
        self.class_head = ClassHead(self.embed_dim, self.padded_query_logit,
                                    self.logit_shift_bias_init, self.dtype)  # fmt: skip
        self.box_head = MLPHead(4, self.gelu_approximate, self.dtype)
        if self.objectness:
            self.objectness_head = MLPHead(1, self.gelu_approximate, self.dtype)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def image_features(self, images, train: bool = False):
        """The merged tokens `[B, N, D]`: patch tokens x class token, then the LayerNorm."""
        _, tokens = self.clip.encode_image(images, train=train, normalize=False,
                                           return_tokens=True)  # fmt: skip
        return self.merged_norm(tokens[:, 1:] * tokens[:, :1])

    def text_embeddings(self, tokens, train: bool = False):
        """Query embeddings `[..., E]` (projected, not normalised) of token ids `[..., L]`."""
        flat = tokens.reshape(-1, tokens.shape[-1])
        embeddings = self.clip.encode_text(flat, train=train, normalize=False)
        return embeddings.reshape(*tokens.shape[:-1], -1)

    def boxes(self, features):
        """`[B, N, 4]` cxcywh in [0, 1]."""
        bias = box_bias(self.grid_size, self.grid_size)
        return nn.sigmoid(self.box_head(features).astype(jnp.float32) + bias)

    def objectness_logits(self, features):
        """OWLv2: `[B, N]` logits that a token is an object, on stop-gradient features."""
        return self.objectness_head(jax.lax.stop_gradient(features))[..., 0].astype(jnp.float32)

    def heads(self, features, query_embeddings=None, query_mask=None, queries_normalized=False):
        """The output dict of image features `[B, N, D]` and queries `[B, Q, E]`
        (`queries_normalized`: used as given, not L2-normalised first)."""
        logits, class_embeddings = self.class_head(
            features, query_embeddings, query_mask, queries_normalized
        )
        out = {"pred_boxes": self.boxes(features), "class_embeddings": class_embeddings}
        if logits is not None:
            out["pred_logits"] = logits
        if self.objectness:
            out["objectness_logits"] = self.objectness_logits(features)
        return out

    def __call__(self, images, text_tokens=None, *, query_embeddings=None, query_mask=None,
                 train: bool = False):  # fmt: skip
        features = self.image_features(images, train)
        if text_tokens is not None:
            if query_embeddings is not None:
                raise ValueError("Give text_tokens or query_embeddings, not both.")
            # Shared queries [Q, L] go through the text tower once.
            query_embeddings = self.text_embeddings(text_tokens, train)
            if query_mask is None:
                query_mask = text_tokens[..., 0] > 0
        if query_embeddings is not None:
            # Shared queries [Q, E] stay unbroadcast: the class head contracts them with
            # every image (XLA:CPU was seen to miscompile the broadcast form's einsum when
            # only some outputs are used, as in a jitted loss; see detection_model).
            if query_mask is None:
                query_mask = jnp.any(query_embeddings != 0, axis=-1)
            query_mask = jnp.broadcast_to(query_mask, query_embeddings.shape[:-1])
        return self.heads(features, query_embeddings, query_mask)

    def embed_image_query(self, query_images, query_boxes=None, train: bool = False):
        """One-shot queries from query images `[B, H, W, 3]`: `(query_embeddings [B, 1, E],
        token indices [B], the query images' boxes [B, N, 4])`.

        The chosen token, as Hugging Face's `image_guided_detection` chooses it (the
        original's one-shot demo with the whole image as the user's box):
          OWL-ViT  among the tokens whose predicted box has IoU with `query_boxes`
                   (xyxy in [0, 1], `[B, 4]`; default the whole image) of at least 0.8 of
                   the best (generalised IoU if no box overlaps it), the one whose class
                   embedding is least similar to the image's mean class embedding;
          OWLv2    the token of highest objectness.
        """
        features = self.image_features(query_images, train)
        _, class_embeddings = self.class_head(features)
        boxes = self.boxes(features)
        if self.objectness:
            index = jnp.argmax(self.objectness_logits(features), axis=-1)
        else:
            if query_boxes is None:
                query_boxes = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0, 1.0]), (len(boxes), 4))
            corners = box_utils.cxcywh_to_xyxy(boxes)
            iou, _ = box_utils.box_iou(query_boxes[:, None], corners, eps=0.0)
            giou = box_utils.generalized_box_iou(query_boxes[:, None], corners, eps=0.0)
            iou, giou = iou[:, 0], giou[:, 0]
            iou = jnp.where(jnp.all(iou == 0, axis=-1, keepdims=True), giou, iou)
            selected = iou >= 0.8 * jnp.max(iou, axis=-1, keepdims=True)
            mean = class_embeddings.mean(axis=1)
            similarity = jnp.einsum("bd,bnd->bn", mean, class_embeddings)
            index = jnp.argmin(jnp.where(selected, similarity, jnp.inf), axis=-1)
        query = jnp.take_along_axis(class_embeddings, index[:, None, None], axis=1)
        return query, index, boxes

    def image_guided_detection(self, images, query_images, query_boxes=None,
                               train: bool = False):  # fmt: skip
        """Detections in `images` of what `query_images` show (one query image per image):
        the output dict with `pred_logits` `[B, N, 1]`, plus `query_index` `[B]` and
        `query_boxes` `[B, N, 4]` (the query images' predicted boxes)."""
        query, index, query_pred_boxes = self.embed_image_query(query_images, query_boxes,
                                                                 train)  # fmt: skip
        out = self.heads(self.image_features(images, train), query)
        return {**out, "query_index": index, "query_boxes": query_pred_boxes}


def owl_vit(variant: str = "owl_vit_b32", **overrides) -> OWLViT:
    """OWL-ViT / OWLv2 of one of VARIANTS (the original's conventions), any attribute
    overridden."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown OWL-ViT variant {variant!r}; known: {', '.join(VARIANTS)}.")
    settings = dict(VARIANTS[variant])
    towers = dict(clip.VARIANTS[settings.pop("clip_variant")])
    towers.pop("image_size")
    return OWLViT(**{**towers, **settings, **ORIGINAL_CONVENTIONS, "context_length": 16,
                     **overrides})  # fmt: skip
