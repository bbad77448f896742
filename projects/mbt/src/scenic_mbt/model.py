"""MBT: RGB and spectrogram transformers that fuse through attention bottlenecks.

Nagrani et al., "Attention Bottlenecks for Multimodal Fusion" (NeurIPS 2021). Each modality
is tokenised on its own (RGB: ViViT tubelets; spectrogram `[T, F, 1]`: 2D patches; each with a
learned position embedding and, for `classifier='token'`, its class token). Blocks below
`fusion_layer` see one modality only. From `fusion_layer` on:
- `n_bottlenecks > 0`: each modality's block sees its own tokens plus `n_bottlenecks` shared
  bottleneck tokens; the bottleneck's update is the mean of what the modalities' blocks made
  of it, so the modalities talk only through those few tokens;
- `n_bottlenecks == 0`: plain self-attention over all modalities' tokens together (the paper's
  "vanilla" fusion; `fusion_layer=0` is early fusion).
`fusion_layer == num_layers` is late fusion: the modalities meet only in the averaged logits.

Each modality is pooled (class token or GAP) and classified by one shared head; training
returns the per-modality logits (the loss is the mean of the modalities' losses) and eval
their average. A modality can be absent for an example (modality dropout in training, or the
single-modality eval passes): it then neither writes the bottleneck, nor is attended to, nor
votes in the logits, exactly as if its tokens had been removed.

Parameter names: `embedding_{m}`, `posembed_{m}/pos_embedding`, `cls_{m}`, `bottleneck`,
`encoder_{m}/encoderblock_{i}` (ViT block names) and `encoder_{m}/encoder_norm`, or with
`share_encoder` one `encoder/...`; plain joint-attention fusion layers of separate encoders
are `encoder_joint/encoderblock_{i}`; `pre_logits`, `head`.
"""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp

from scenic.model_lib import layers, vit_encoder

MODALITIES = ("rgb", "spectrogram")
CLASSIFIERS = ("gap", "token")


class MaskedEncoderBlock(vit_encoder.EncoderBlock):
    """The core ViT block (same parameters) whose attention can ignore some keys:
    `key_mask` `[B, L]`, 1 where a token may be attended to."""

    @nn.compact
    def __call__(self, x, deterministic: bool = True, key_mask=None):
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_0")(x)
        mask = None if key_mask is None else key_mask[:, None, None, :] > 0
        y = self.attention(
            num_heads=self.num_heads,
            dropout_rate=self.attention_dropout_rate,
            dtype=self.dtype,
            name="MultiHeadDotProductAttention_1",
        )(y, mask=mask, deterministic=deterministic)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        x = x + layers.StochasticDepth(self.stochastic_depth)(y, deterministic)
        y = self.mlp_branch(x, deterministic, "LayerNorm_2", "MlpBlock_3")
        return x + layers.StochasticDepth(self.stochastic_depth)(y, deterministic)


class ModalityEncoder(nn.Module):
    """`num_layers` blocks named as a ViT's (`encoderblock_i`) and its `encoder_norm`; the
    MBT calls the blocks one at a time (`block(i)`), as its fusion schedule says."""

    num_layers: int
    mlp_dim: int
    num_heads: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    remat: bool = False
    dtype: jnp.dtype | None = None
    layer_indices: tuple[int, ...] = ()

    def setup(self):
        block_cls = (
            nn.remat(MaskedEncoderBlock, static_argnums=(2,)) if self.remat else MaskedEncoderBlock
        )
        for i in self.layer_indices:
            setattr(
                self,
                f"encoderblock_{i}",
                block_cls(
                    mlp_dim=self.mlp_dim,
                    num_heads=self.num_heads,
                    dropout_rate=self.dropout_rate,
                    attention_dropout_rate=self.attention_dropout_rate,
                    stochastic_depth=self.stochastic_depth * i / max(self.num_layers - 1, 1),
                    dtype=self.dtype,
                ),
            )
        self.encoder_norm = nn.LayerNorm(dtype=self.dtype)

    def block(self, i: int, x, deterministic: bool, key_mask=None):
        return getattr(self, f"encoderblock_{i}")(x, deterministic, key_mask)

    def norm(self, x):
        return self.encoder_norm(x)

    def __call__(self, x, deterministic: bool = True):
        for i in self.layer_indices:
            x = self.block(i, x, deterministic)
        return self.norm(x)


class MBT(nn.Module):
    """Multimodal bottleneck transformer over a dict of modalities.

    Attributes:
      num_classes: width of the (shared) head.
      modalities: the input keys, a subset of MODALITIES (set from the data set).
      rgb_patch_size: tubelet (t, h, w) of `rgb` `[B, T, H, W, C]`.
      spectrogram_patch_size: patch (time, frequency) of `spectrogram` `[B, T, F, C]`.
      fusion_layer: first block with cross-modal exchange (0 early, num_layers late).
      n_bottlenecks: shared bottleneck tokens (0: joint self-attention in fusion layers).
      share_encoder: one set of block weights for every modality.
      classifier: 'gap' (mean of each modality's tokens) or 'token' (class token each).
      eval_with_bottlenecks: False runs fusion layers without the bottleneck at eval.
      modality_dropout: in training, the probability that an example keeps one modality only
        (chosen uniformly); never drops every modality.
      eval_single_modality: eval also returns `logits_{m}_only`, each modality on its own.
    """

    num_classes: int
    modalities: tuple[str, ...] = MODALITIES
    rgb_patch_size: tuple[int, int, int] = (2, 16, 16)
    spectrogram_patch_size: tuple[int, int] = (16, 16)
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    fusion_layer: int = 8
    n_bottlenecks: int = 4
    share_encoder: bool = False
    classifier: str = "gap"
    eval_with_bottlenecks: bool = True
    modality_dropout: float = 0.0
    eval_single_modality: bool = True
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    representation_size: int | None = None
    head_bias_init: float = 0.0
    remat: bool = False
    dtype: jnp.dtype | None = None

    def check(self) -> None:
        """Raises ValueError naming the first field that cannot work (before tracing)."""
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if not self.modalities or unknown or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(
                f"MBT modalities must be distinct names out of {MODALITIES}, got "
                f"{tuple(self.modalities)}."
            )
        if len(self.rgb_patch_size) != 3 or len(self.spectrogram_patch_size) != 2:
            raise ValueError(
                f"rgb_patch_size must be (t, h, w) and spectrogram_patch_size (time, freq); "
                f"got {tuple(self.rgb_patch_size)} and {tuple(self.spectrogram_patch_size)}."
            )
        if not 0 <= self.fusion_layer <= self.num_layers:
            raise ValueError(
                f"fusion_layer must be in [0, num_layers={self.num_layers}], got "
                f"{self.fusion_layer}."
            )
        if self.n_bottlenecks < 0:
            raise ValueError(f"n_bottlenecks must be >= 0, got {self.n_bottlenecks}.")
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {self.classifier!r}.")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {self.modality_dropout}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}."
            )

    # --- structure ------------------------------------------------------------------------

    @property
    def has_fusion_layers(self) -> bool:
        return self.fusion_layer < self.num_layers and len(self.modalities) > 1

    @property
    def joint_attention(self) -> bool:
        """Fusion layers attend over all modalities' tokens together."""
        return self.has_fusion_layers and self.n_bottlenecks == 0

    def setup(self):
        self.check()
        encoder = lambda indices: ModalityEncoder(
            num_layers=self.num_layers,
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            stochastic_depth=self.stochastic_depth,
            remat=self.remat,
            dtype=self.dtype,
            layer_indices=tuple(indices),
        )
        everything = range(self.num_layers)
        own = range(self.fusion_layer) if self.joint_attention else everything
        if self.share_encoder:
            self.encoder = encoder(everything)
        else:
            self.encoder = {m: encoder(own) for m in self.modalities}  # encoder_{m}
            if self.joint_attention:
                self.encoder_joint = encoder(range(self.fusion_layer, self.num_layers))
        self.embedding = {
            m: (
                vit_encoder.TubeletEmbedding(
                    tuple(self.rgb_patch_size), self.hidden_size, self.dtype
                )
                if m == "rgb"
                else vit_encoder.PatchEmbedding(
                    tuple(self.spectrogram_patch_size), self.hidden_size, self.dtype
                )
            )
            for m in self.modalities
        }
        self.posembed = {m: layers.AddLearnedPositionEmbedding() for m in self.modalities}
        if self.classifier == "token":
            self.cls = {
                m: self.param(f"cls_{m}", nn.initializers.zeros, (1, 1, self.hidden_size))
                for m in self.modalities
            }
        if self.has_fusion_layers and self.n_bottlenecks:
            self.bottleneck = self.param(
                "bottleneck",
                nn.initializers.normal(stddev=0.02),
                (1, self.n_bottlenecks, self.hidden_size),
            )
        self.embedding_dropout = nn.Dropout(self.dropout_rate)
        if self.representation_size:
            self.pre_logits = nn.Dense(self.representation_size)
        self.head = nn.Dense(
            self.num_classes,
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.constant(self.head_bias_init),
        )

    def encoder_of(self, modality: str) -> ModalityEncoder:
        return self.encoder if self.share_encoder else self.encoder[modality]

    def fusion_block(self, modality: str | None, i: int, x, deterministic, key_mask=None):
        """Block i for one modality's tokens, or (modality None) for the joint sequence."""
        if modality is None:
            owner = self.encoder if self.share_encoder else self.encoder_joint
        else:
            owner = self.encoder_of(modality)
        return owner.block(i, x, deterministic, key_mask)

    # --- forward --------------------------------------------------------------------------

    def tokens(self, modality: str, x, deterministic: bool):
        x = self.embedding[modality](x)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        if self.classifier == "token":
            cls = jnp.tile(self.cls[modality].astype(x.dtype), (x.shape[0], 1, 1))
            x = jnp.concatenate([cls, x], axis=1)
        x = self.posembed[modality](x)
        return self.embedding_dropout(x, deterministic=deterministic)

    def presence(self, batch: int, train: bool):
        """`[B, M]` 1.0 where a modality takes part: all, except under modality dropout."""
        count = len(self.modalities)
        present = jnp.ones((batch, count), jnp.float32)
        if not train or not self.modality_dropout or count == 1:
            return present
        drop_key, keep_key = jax.random.split(self.make_rng("dropout"))
        single = jax.random.bernoulli(drop_key, self.modality_dropout, (batch,))
        kept = jax.nn.one_hot(jax.random.randint(keep_key, (batch,), 0, count), count)
        return jnp.where(single[:, None], kept, present)

    def fuse(self, x: dict, present, deterministic: bool, use_bottleneck: bool) -> dict:
        """Blocks fusion_layer.. for the modalities in `x` (present `[B, len(x)]`)."""
        names, x = list(x), dict(x)
        layers_from = range(self.fusion_layer, self.num_layers)
        if self.joint_attention:
            lengths = [x[m].shape[1] for m in names]
            joint = jnp.concatenate([x[m] for m in names], axis=1)
            key_mask = jnp.concatenate(
                [jnp.repeat(present[:, j : j + 1], n, axis=1) for j, n in enumerate(lengths)],
                axis=1,
            )
            for i in layers_from:
                joint = self.fusion_block(None, i, joint, deterministic, key_mask)
            parts = jnp.split(joint, list(itertools.accumulate(lengths))[:-1], axis=1)
            return dict(zip(names, parts))
        if not (use_bottleneck and self.has_fusion_layers and self.n_bottlenecks):
            for i in layers_from:
                x = {m: self.fusion_block(m, i, x[m], deterministic) for m in names}
            return x
        batch = present.shape[0]
        shared = jnp.tile(self.bottleneck.astype(x[names[0]].dtype), (batch, 1, 1))
        weights = present[:, :, None, None].astype(shared.dtype)
        for i in layers_from:
            updates = []
            for m in names:
                n = x[m].shape[1]
                y = self.fusion_block(m, i, jnp.concatenate([x[m], shared], axis=1), deterministic)
                x[m], update = y[:, :n], y[:, n:]
                updates.append(update)
            shared = jnp.sum(jnp.stack(updates, 1) * weights, 1) / jnp.sum(weights, 1)
        return x

    def classify(self, modality: str, x):
        x = self.encoder_of(modality).norm(x)
        pooled = x[:, 0] if self.classifier == "token" else jnp.mean(x, axis=1)
        if self.representation_size:
            pooled = nn.tanh(self.pre_logits(pooled))
        return self.head(pooled).astype(jnp.float32)

    def __call__(self, inputs, train: bool = False, single_modality: bool | None = None):
        """`inputs` {modality: array} -> {'logits': [B, K]}; in training also
        `modality_logits` `[B, M, K]` and `present` `[B, M]`; at eval (with
        `single_modality`, default `eval_single_modality`) `logits_{m}_only` per modality.
        """
        if not isinstance(inputs, dict) or set(inputs) != set(self.modalities):
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(f"MBT expects inputs {{{', '.join(self.modalities)}}}, got {got}.")
        deterministic = not train
        x = {m: self.tokens(m, inputs[m], deterministic) for m in self.modalities}
        for i in range(self.fusion_layer):
            x = {m: self.encoder_of(m).block(i, x[m], deterministic) for m in self.modalities}
        batch = x[self.modalities[0]].shape[0]
        present = self.presence(batch, train)
        use_bottleneck = train or self.eval_with_bottlenecks
        fused = self.fuse(x, present, deterministic, use_bottleneck)
        stacked = jnp.stack([self.classify(m, fused[m]) for m in self.modalities], axis=1)
        weights = present[..., None]
        outputs = {"logits": jnp.sum(stacked * weights, 1) / jnp.sum(weights, 1)}
        if train:
            outputs.update(modality_logits=stacked, present=present)
            return outputs
        if single_modality is None:
            single_modality = self.eval_single_modality
        if single_modality and len(self.modalities) > 1:
            alone = jnp.ones((batch, 1), jnp.float32)
            for m in self.modalities:
                only = self.fuse({m: x[m]}, alone, deterministic, use_bottleneck)[m]
                outputs[f"logits_{m}_only"] = self.classify(m, only)
        return outputs


def build_model(model_config, num_classes: int, modalities) -> MBT:
    """The MBT of `config.model` (its keys are MBT's constructor arguments), checked."""
    model = MBT(num_classes=num_classes, modalities=tuple(modalities), **dict(model_config))
    model.check()
    return model
