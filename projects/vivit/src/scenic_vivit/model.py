"""ViViT: a Video Vision Transformer (Arnab et al., ICCV 2021), its four variants in one file.

Input videos are `[B, T, H, W, C]`. Tokenisation is either uniform frame sampling (2D ViT
patches on each of `num_sampled_frames` evenly spaced frames) or tubelets (3D patches of
`patch_size = (t, p, p)`), both written as reshape + einsum rather than `nn.Conv`, which
XLA:CPU runs far slower (the kernels keep the conv layouts `[p, p, C, D]` and
`[t, p, p, C, D]` of published checkpoints). The four variants (`variant`):

  1 'spatio_temporal':            joint attention over all t*h*w tokens (a ViT on the video).
  2 'factorised_encoder':         a spatial ViT per temporal index (own CLS token or GAP),
                                  then a temporal transformer over the t frame embeddings.
  3 'factorised_self_attention':  each block attends over time then over space (or the
                                  reverse, `attention_order`), then one MLP.
  4 'factorised_dot_product':     each block's heads split: half attend over time, half
                                  over space.

The embeddings, the Transformer encoder and its blocks are the core's
`scenic.model_lib.vit_encoder`, the image ViT's own: model 4's block is the ViT block with
`FactorisedDotProductAttention` plugged in, and model 3's reuses its branches. Parameter
names follow the original Scenic ViViT and the published ViT checkpoints (`embedding`,
`cls`, `Transformer/posembed_input`, `encoderblock_i`, `head`), so image-ViT weights map
onto ViViT one to one (see `init_from_vit`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from scenic.model_lib import layers, vit_encoder

VARIANTS = (
    "spatio_temporal",
    "factorised_encoder",
    "factorised_self_attention",
    "factorised_dot_product",
)
TOKENIZERS = ("tubelet", "frames")
CLASSIFIERS = ("token", "gap")


def uniform_frame_indices(num_frames: int, num_sampled: int) -> np.ndarray:
    """Indices of `num_sampled` evenly spaced frames: the centre frame of each of
    `num_sampled` equal segments of the clip."""
    if not 0 < num_sampled <= num_frames:
        raise ValueError(
            f"num_sampled_frames={num_sampled} must be in [1, {num_frames}] (frames in the clip)."
        )
    return ((np.arange(num_sampled) + 0.5) * num_frames / num_sampled).astype(np.int64)


def _attend(query, key, value, dropout: nn.Dropout | None, deterministic: bool):
    """Softmax attention on `[N, L, heads, head_dim]` arrays (the first axis is batch)."""
    scale = 1.0 / np.sqrt(query.shape[-1])
    logits = jnp.einsum("nqhd,nkhd->nhqk", query * scale, key)
    weights = jax.nn.softmax(logits, axis=-1)
    if dropout is not None:
        weights = dropout(weights, deterministic=deterministic)
    return jnp.einsum("nhqk,nkhd->nqhd", weights, value)


class FactorisedDotProductAttention(nn.Module):
    """Multi-head attention on `[B, t, s, D]` whose first half of the heads attend over time
    (tokens at the same spatial position) and second half over space (tokens of the same
    frame). Same parameters (and names) as `layers.MultiHeadAttention`."""

    num_heads: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        batch, time, space, width = x.shape
        if self.num_heads % 2 or width % self.num_heads:
            raise ValueError(
                f"Factorised dot-product attention needs an even num_heads dividing the width "
                f"{width}, got num_heads={self.num_heads}."
            )
        heads, head_dim = self.num_heads, width // self.num_heads
        dense = lambda name: nn.DenseGeneral(
            (heads, head_dim),
            kernel_init=nn.initializers.xavier_uniform(),
            dtype=self.dtype,
            name=name,
        )
        q, k, v = dense("query")(x), dense("key")(x), dense("value")(x)  # [B, t, s, H, d]
        dropout = nn.Dropout(self.dropout_rate) if self.dropout_rate > 0 else None
        half = heads // 2

        def over_time(a):  # [B, t, s, H/2, d] -> [B*s, t, H/2, d]
            return a.transpose(0, 2, 1, 3, 4).reshape(batch * space, time, half, head_dim)

        def over_space(a):  # [B, t, s, H/2, d] -> [B*t, s, H/2, d]
            return a.reshape(batch * time, space, half, head_dim)

        t_out = _attend(*(over_time(a[..., :half, :]) for a in (q, k, v)), dropout, deterministic)
        t_out = t_out.reshape(batch, space, time, half, head_dim).transpose(0, 2, 1, 3, 4)
        s_out = _attend(*(over_space(a[..., half:, :]) for a in (q, k, v)), dropout, deterministic)
        s_out = s_out.reshape(batch, time, space, half, head_dim)
        attended = jnp.concatenate([t_out, s_out], axis=-2)
        return nn.DenseGeneral(
            width,
            axis=(-2, -1),
            kernel_init=nn.initializers.xavier_uniform(),
            dtype=self.dtype,
            name="out",
        )(attended)


class FactorisedSelfAttentionBlock(vit_encoder.EncoderBlock):
    """Model 3's block on `[B, t, s, D]`: x + MSA_time(LN(x)), x + MSA_space(LN(x)) (in
    `attention_order`), then x + MLP(LN(x)); every residual branch has dropout and
    stochastic depth. The core block's branches, two attentions instead of one."""

    attention_order: str = "time_space"

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        if self.attention_order not in ("time_space", "space_time"):
            raise ValueError(
                f"attention_order must be 'time_space' or 'space_time', "
                f"got {self.attention_order!r}."
            )
        batch, time, space, width = x.shape
        drop_path = layers.StochasticDepth(self.stochastic_depth)
        for axis in self.attention_order.split("_"):
            if axis == "time":  # tokens at one spatial position attend over frames
                y = x.transpose(0, 2, 1, 3).reshape(batch * space, time, width)
            else:  # tokens of one frame attend over space
                y = x.reshape(batch * time, space, width)
            y = self.attention_branch(
                y, deterministic, f"LayerNorm_{axis}", f"MultiHeadDotProductAttention_{axis}"
            )
            if axis == "time":
                y = y.reshape(batch, space, time, width).transpose(0, 2, 1, 3)
            else:
                y = y.reshape(batch, time, space, width)
            x = x + drop_path(y, deterministic)
        y = self.mlp_branch(x, deterministic, "LayerNorm_mlp", "MlpBlock")
        return x + drop_path(y, deterministic)


class ViViT(nn.Module):
    """Video Vision Transformer classifier.

    Attributes:
      num_classes: output classes (0 or None: return the pre-logits representation). A
        multi-head model (verb + noun) uses one head of width sum(class_splits), which is
        exactly several Dense heads side by side; `models.ViViTMultiHeadClassificationModel`
        splits it.
      variant: one of VARIANTS (models 1-4 of the paper, in order).
      tokenizer: 'tubelet' (3D patches of `patch_size`) or 'frames' (uniform frame sampling,
        2D patches of `patch_size[1:]`; `patch_size[0]` must be 1).
      patch_size: (t, h, w) of a tubelet.
      num_sampled_frames: frames the 'frames' tokenizer keeps (None: every frame).
      hidden_size, num_layers, num_heads, mlp_dim: encoder size (the spatial encoder's for
        the factorised encoder).
      temporal_num_layers: layers of the factorised encoder's temporal transformer.
      attention_order: 'time_space' or 'space_time' (factorised self-attention).
      classifier: 'token' (class token; models 1 and 2) or 'gap' (global average pool).
      representation_size: optional pre-logits Dense + tanh layer width.
      stochastic_depth: drop-path rate of the last layer; layer i uses i/(L-1) of it.
      head_bias_init: initial value of the classifier bias (-10 for multi-label).
      remat: recompute each encoder block's activations in the backward pass (True or
        'full'; 'dots' keeps the matmul results): about a quarter more compute, parameters
        the same either way. Meant to save activation memory on accelerators; XLA:CPU was
        measured to save none (tools/README.md).
      scan_layers: each encoder's blocks as one `nn.scan` (parameters stacked under
        `encoderblock`; `init_from` converts to and from per-layer names). Needs
        stochastic_depth 0.
    """

    num_classes: int | None
    variant: str = "spatio_temporal"
    tokenizer: str = "tubelet"
    patch_size: tuple[int, int, int] = (2, 16, 16)
    num_sampled_frames: int | None = None
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    temporal_num_layers: int = 4
    attention_order: str = "time_space"
    classifier: str = "token"
    representation_size: int | None = None
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    head_bias_init: float = 0.0
    remat: bool | str = False
    scan_layers: bool = False
    dtype: jnp.dtype | None = None

    def check(self) -> None:
        """Raises a ValueError naming the first bad attribute."""
        for name, value, allowed in (
            ("variant", self.variant, VARIANTS),
            ("tokenizer", self.tokenizer, TOKENIZERS),
            ("classifier", self.classifier, CLASSIFIERS),
        ):
            if value not in allowed:
                raise ValueError(f"ViViT {name} must be one of {allowed}, got {value!r}.")
        if len(self.patch_size) != 3:
            raise ValueError(f"ViViT patch_size must be (t, h, w), got {self.patch_size}.")
        if self.tokenizer == "frames" and self.patch_size[0] != 1:
            raise ValueError(
                f"The 'frames' tokenizer takes 2D patches: patch_size must be (1, h, w), "
                f"got {tuple(self.patch_size)}."
            )
        if self.classifier == "token" and self.variant in VARIANTS[2:]:
            raise ValueError(
                f"ViViT variant {self.variant!r} factorises attention over a (time, space) "
                f"token grid and has no class token: use classifier='gap'."
            )

    def token_grid(self, video_shape) -> tuple[int, int, int]:
        """(t, h, w) token grid for a `[B, T, H, W, C]` video shape."""
        _, frames, height, width, _ = video_shape
        pt, ph, pw = self.patch_size
        if self.tokenizer == "frames":
            frames = self.num_sampled_frames or frames
        return frames // pt, height // ph, width // pw

    def _tokenize(self, video):
        if self.tokenizer == "tubelet":
            return vit_encoder.TubeletEmbedding(
                tuple(self.patch_size), self.hidden_size, self.dtype, name="embedding"
            )(video)
        batch, frames, height, width, channels = video.shape
        if self.num_sampled_frames:
            video = video[:, uniform_frame_indices(frames, self.num_sampled_frames)]
        frames = video.shape[1]
        x = vit_encoder.PatchEmbedding(
            tuple(self.patch_size[1:]), self.hidden_size, self.dtype, name="embedding"
        )(video.reshape(batch * frames, height, width, channels))
        return x.reshape(batch, frames, *x.shape[1:])

    def _encoder(self, name: str, num_layers: int, **blocks):
        return vit_encoder.Encoder(
            num_layers=num_layers,
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            has_cls_token=self.classifier == "token",
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            stochastic_depth=self.stochastic_depth,
            remat=self.remat,
            scan_layers=self.scan_layers,
            dtype=self.dtype,
            name=name,
            **blocks,
        )

    def _encode_sequence(self, x, encoder_name: str, cls_name: str, num_layers: int, train):
        """[N, L, D] tokens -> class token (prepended) or average after the encoder: [N, D]."""
        if self.classifier == "token":
            x = vit_encoder.add_class_token(self, x, cls_name)
        x = self._encoder(encoder_name, num_layers)(x, train=train)
        return vit_encoder.pool(x, self.classifier)

    @nn.compact
    def __call__(self, video, *, train: bool = False):
        self.check()
        if video.ndim != 5:
            raise ValueError(f"ViViT expects [B, T, H, W, C] videos, got shape {video.shape}.")
        x = self._tokenize(video)  # [B, t, h, w, D]
        batch, time, grid_h, grid_w, width = x.shape
        if self.variant == "spatio_temporal":
            x = self._encode_sequence(
                x.reshape(batch, time * grid_h * grid_w, width),
                "Transformer",
                "cls",
                self.num_layers,
                train,
            )
        elif self.variant == "factorised_encoder":
            x = self._encode_sequence(
                x.reshape(batch * time, grid_h * grid_w, width),
                "SpatialTransformer",
                "cls_SpatialTransformer",
                self.num_layers,
                train,
            )
            x = self._encode_sequence(
                x.reshape(batch, time, width),
                "TemporalTransformer",
                "cls_TemporalTransformer",
                self.temporal_num_layers,
                train,
            )
        else:
            if self.variant == "factorised_self_attention":
                blocks = dict(
                    block=FactorisedSelfAttentionBlock,
                    block_kwargs={"attention_order": self.attention_order},
                )
            else:
                blocks = dict(block_kwargs={"attention": FactorisedDotProductAttention})
            x = self._encoder("Transformer", self.num_layers, **blocks)(
                x.reshape(batch, time, grid_h * grid_w, width), train=train
            )
            x = vit_encoder.pool(x, "gap")
        return vit_encoder.classification_head(
            x,
            self.num_classes,
            representation_size=self.representation_size,
            bias_init=self.head_bias_init,
        )


def build_vivit(model_config: ml_collections.ConfigDict, num_classes: int | None) -> ViViT:
    """ViViT from `config.model` (its constructor arguments), checked before any tracing."""
    kwargs = model_config.to_dict()
    if "patch_size" in kwargs:
        kwargs["patch_size"] = tuple(kwargs["patch_size"])
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    model = ViViT(num_classes=num_classes, **kwargs)
    model.check()
    return model
