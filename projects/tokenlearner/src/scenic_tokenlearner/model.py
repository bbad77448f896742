"""ViT and ViViT with a TokenLearner: fewer tokens from a chosen layer on.

Images `[B, H, W, C]` are cut into 2D patches (`patch_size=(h, w)`), videos
`[B, T, H, W, C]` into tubelets (`patch_size=(t, h, w)`, ViViT's tokenizer). A learned
position embedding is added to every token, then `num_layers` pre-LN ViT blocks (the core's
`vit_encoder.EncoderBlock`) run with joint attention over all tokens. Before block
`tokenlearner_loc`:

* without TokenFuser, a TokenLearner replaces the tokens by `num_tokens` learned ones, and
  every later block sees only those;
* with TokenFuser (`token_fuser=True`), every block from there is wrapped as
  x + TokenFuser(block(TokenLearner(x)), x): the blocks run on the learned tokens, the
  residual stream keeps the full grid.

For video, `video_tokens='per_frame'` learns `num_tokens` tokens from each temporal index's
tokens (T x S tokens afterwards; the paper's video models) and `'spatio_temporal'` learns
`num_tokens` from the whole clip. `tokenlearner_loc=None` is the plain ViT / ViViT model 1
(joint attention, GAP), the model the TokenLearner is measured against.

Parameter names are the ViT checkpoints' (`embedding`, `Transformer/posembed_input`,
`Transformer/encoderblock_i`, `Transformer/encoder_norm`, `head`), so an image ViT
initialises this model (`init_from_vit`); the new modules are `Transformer/TokenLearner`
(or `TokenLearner_i` and `TokenFuser_i` with TokenFuser).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from scenic.model_lib import layers, vit_encoder
from scenic_tokenlearner.modules import TokenFuser, TokenLearnerV1, TokenLearnerV11

VERSIONS = ("v1.1", "v1")
VIDEO_TOKENS = ("per_frame", "spatio_temporal")
CLASSIFIERS = ("gap", "map")


class TokenLearnerViT(nn.Module):
    """ViT / ViViT (joint attention) classifier with a TokenLearner.

    Attributes:
      num_classes: output classes (0 or None: return the pre-logits representation).
      patch_size: (h, w) patches for images, (t, h, w) tubelets for videos.
      hidden_size, num_layers, num_heads, mlp_dim: encoder size.
      tokenlearner_loc: the block the TokenLearner goes before (0 = right after the
        embedding); None: no TokenLearner (the plain model).
      num_tokens: learned tokens (per temporal index with `video_tokens='per_frame'`).
      version: 'v1.1' (MLP + softmax over positions; the default) or 'v1' (3x3
        convolutions + sigmoid maps).
      v1_pooling: 'sum' or 'mean' of the weighted inputs (v1 only).
      bottleneck_dim: hidden width of v1.1's and TokenFuser's weighting MLPs.
      token_fuser: TokenLearner -> block -> TokenFuser at every block from
        `tokenlearner_loc` on, instead of one TokenLearner.
      video_tokens: 'per_frame' or 'spatio_temporal' (videos only).
      classifier: 'gap' (mean of the final tokens) or 'map' (attention pooling).
      representation_size: optional pre-logits Dense + tanh layer width.
      stochastic_depth: drop-path rate of the last block; block i uses i/(L-1) of it.
      head_bias_init: initial value of the classifier bias (-10 for multi-label).
      remat: recompute each block's activations in the backward pass.
    """

    num_classes: int | None
    patch_size: tuple[int, ...] = (16, 16)
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    tokenlearner_loc: int | None = 9
    num_tokens: int = 8
    version: str = "v1.1"
    v1_pooling: str = "sum"
    bottleneck_dim: int = 64
    token_fuser: bool = False
    video_tokens: str = "per_frame"
    classifier: str = "gap"
    representation_size: int | None = None
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    head_bias_init: float = 0.0
    remat: bool = False
    dtype: jnp.dtype | None = None

    def check(self) -> None:
        """Raises a ValueError naming the first bad attribute."""
        for name, value, allowed in (
            ("version", self.version, VERSIONS),
            ("video_tokens", self.video_tokens, VIDEO_TOKENS),
            ("classifier", self.classifier, CLASSIFIERS),
        ):
            if value not in allowed:
                raise ValueError(f"TokenLearner {name} must be one of {allowed}, got {value!r}.")
        if len(self.patch_size) not in (2, 3):
            raise ValueError(
                f"patch_size must be (h, w) for images or (t, h, w) for videos, got "
                f"{tuple(self.patch_size)}."
            )
        loc = self.tokenlearner_loc
        if loc is not None and not 0 <= loc < self.num_layers:
            raise ValueError(
                f"tokenlearner_loc={loc} must be a block index in [0, {self.num_layers}) "
                f"(num_layers={self.num_layers}), or None for no TokenLearner."
            )
        if loc is not None and self.num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {self.num_tokens}.")

    def _embed(self, inputs):
        """Images -> `[B, 1, h, w, D]`, videos -> `[B, t, h, w, D]`."""
        is_video = len(self.patch_size) == 3
        if inputs.ndim != (5 if is_video else 4):
            kind = "videos [B, T, H, W, C]" if is_video else "images [B, H, W, C]"
            raise ValueError(
                f"patch_size {tuple(self.patch_size)} takes {kind}; got inputs of shape "
                f"{inputs.shape}."
            )
        if is_video:
            return vit_encoder.TubeletEmbedding(
                tuple(self.patch_size), self.hidden_size, self.dtype, name="embedding"
            )(inputs)
        x = vit_encoder.PatchEmbedding(
            tuple(self.patch_size), self.hidden_size, self.dtype, name="embedding"
        )(inputs)
        return x[:, None]

    @nn.compact
    def __call__(self, inputs, *, train: bool = False):
        self.check()
        x = self._embed(inputs)
        batch, time, height, grid_w, width = x.shape
        x = TokenLearnerEncoder(
            grid=(time, height, grid_w),
            num_layers=self.num_layers,
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            tokenlearner_loc=self.tokenlearner_loc,
            num_tokens=self.num_tokens,
            version=self.version,
            v1_pooling=self.v1_pooling,
            bottleneck_dim=self.bottleneck_dim,
            token_fuser=self.token_fuser,
            per_frame=self.video_tokens == "per_frame",
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            stochastic_depth=self.stochastic_depth,
            remat=self.remat,
            dtype=self.dtype,
            name="Transformer",
        )(x.reshape(batch, -1, width), train=train)
        x = vit_encoder.pool(
            x, self.classifier, num_heads=self.num_heads, mlp_dim=self.mlp_dim, dtype=self.dtype
        )
        return vit_encoder.classification_head(
            x,
            self.num_classes,
            representation_size=self.representation_size,
            bias_init=self.head_bias_init,
        )


class TokenLearnerEncoder(nn.Module):
    """Position embedding, the blocks with the TokenLearner (and TokenFuser) where
    `TokenLearnerViT` asks for them, and the final LayerNorm: `[B, t*h*w, D]` tokens on
    `grid` = (t, h, w) -> `[B, L', D]` (L' = t*S, S, or t*h*w with TokenFuser)."""

    grid: tuple[int, int, int]
    num_layers: int
    mlp_dim: int
    num_heads: int
    tokenlearner_loc: int | None
    num_tokens: int
    version: str
    v1_pooling: str
    bottleneck_dim: int
    token_fuser: bool
    per_frame: bool
    dropout_rate: float
    attention_dropout_rate: float
    stochastic_depth: float
    remat: bool
    dtype: jnp.dtype | None

    def _groups(self, x):
        """`[B, t*h*w, D]` -> what one TokenLearner call pools: each temporal index
        (per frame; images have t = 1) or the whole clip, `[B * groups, *positions, D]`
        with the positions as a grid for v1 and flat for v1.1."""
        batch, _, width = x.shape
        time, height, grid_w = self.grid
        if self.per_frame or time == 1:
            shape = (batch * time, height, grid_w, width)
        else:
            shape = (batch, time, height, grid_w, width)
        x = x.reshape(shape)
        return x if self.version == "v1" else x.reshape(shape[0], -1, width)

    def _learner(self, name: str):
        if self.version == "v1":
            return TokenLearnerV1(self.num_tokens, self.v1_pooling, self.dtype, name=name)
        return TokenLearnerV11(
            self.num_tokens, self.bottleneck_dim, self.dropout_rate, self.dtype, name=name
        )

    @nn.compact
    def __call__(self, x, train: bool = False):
        deterministic = not train
        batch, _, width = x.shape
        x = layers.AddLearnedPositionEmbedding(name="posembed_input")(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        block_cls = vit_encoder.EncoderBlock
        if self.remat:
            block_cls = vit_encoder.rematerialised(block_cls)
        loc = self.tokenlearner_loc
        for i in range(self.num_layers):
            block = block_cls(
                mlp_dim=self.mlp_dim,
                num_heads=self.num_heads,
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                stochastic_depth=self.stochastic_depth * i / max(self.num_layers - 1, 1),
                dtype=self.dtype,
                name=f"encoderblock_{i}",
            )
            if loc is None or i < loc:
                x = block(x, deterministic)
            elif not self.token_fuser:
                if i == loc:  # from here on the blocks see only the learned tokens
                    learned = self._learner("TokenLearner")(self._groups(x), deterministic)
                    x = learned.reshape(batch, -1, width)
                x = block(x, deterministic)
            else:
                groups = self._groups(x)
                residual = groups.reshape(groups.shape[0], -1, width)
                learned = self._learner(f"TokenLearner_{i}")(groups, deterministic)
                learned = block(learned.reshape(batch, -1, width), deterministic)
                fused = TokenFuser(
                    bottleneck_dim=self.bottleneck_dim,
                    dropout_rate=self.dropout_rate,
                    dtype=self.dtype,
                    name=f"TokenFuser_{i}",
                )(learned.reshape(residual.shape[0], -1, width), residual, deterministic)
                x = (residual + fused).reshape(batch, -1, width)
        return nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)


def build_model(model_config: ml_collections.ConfigDict, num_classes: int | None):
    """`TokenLearnerViT` from `config.model` (its constructor arguments), checked before any
    tracing."""
    kwargs = model_config.to_dict()
    if "patch_size" in kwargs:
        kwargs["patch_size"] = tuple(kwargs["patch_size"])
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    model = TokenLearnerViT(num_classes=num_classes, **kwargs)
    model.check()
    return model
