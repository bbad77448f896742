"""The ViT encoder, in the core so that the image ViT and ViViT share one copy of it.

Patch and tubelet embeddings, the pre-LN block with a pluggable attention module, the
encoder, pooling (class token, average, MAP) and the classification head: a fix here
reaches every model built from them. Parameter names are the published ViT checkpoints'
(`embedding`, `cls`, `posembed_input`, `encoderblock_i/{LayerNorm_0,
MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3}`, `encoder_norm`, `MAPHead_0`,
`pre_logits`, `head`), so pretrained weights load one to one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict

from scenic.model_lib import layers

POOLINGS = ("token", "gap", "map")


class PatchEmbedding(nn.Module):
    """Non-overlapping patches -> linear projection: a stride-`patch` convolution.

    Written as reshape + matmul, which XLA:CPU runs far faster than `nn.Conv` on small
    images; the kernel keeps the conv layout `[ph, pw, C, D]` of published checkpoints.
    `use_bias=False` for models whose patch convolution has none (CLIP's `conv1`).
    """

    patch_size: tuple[int, int]
    hidden_size: int
    dtype: jnp.dtype | None = None
    use_bias: bool = True

    @nn.compact
    def __call__(self, images):
        batch, height, width, channels = images.shape
        ph, pw = self.patch_size
        if height % ph or width % pw:
            raise ValueError(
                f"Image size {(height, width)} is not divisible by patch size {(ph, pw)}."
            )
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3),
            (ph, pw, channels, self.hidden_size),
        )
        patches = images.reshape(batch, height // ph, ph, width // pw, pw, channels)
        dtype = self.dtype or images.dtype
        out = jnp.einsum("bhpwqc,pqcd->bhwd", patches.astype(dtype), kernel.astype(dtype))
        if not self.use_bias:
            return out
        bias = self.param("bias", nn.initializers.zeros, (self.hidden_size,))
        return out + bias.astype(dtype)


class TubeletEmbedding(nn.Module):
    """Non-overlapping 3D patches -> linear projection: a stride-(t, p, p) 3D convolution.

    The kernel has the conv layout `[t, p, p, C, D]`; the projection is one einsum.
    """

    patch_size: tuple[int, int, int]
    hidden_size: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, video):
        batch, frames, height, width, channels = video.shape
        pt, ph, pw = self.patch_size
        if frames % pt or height % ph or width % pw:
            raise ValueError(
                f"Video size {(frames, height, width)} (T, H, W) is not divisible by the "
                f"tubelet size {(pt, ph, pw)}."
            )
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(in_axis=(0, 1, 2, 3), out_axis=4),
            (pt, ph, pw, channels, self.hidden_size),
        )
        bias = self.param("bias", nn.initializers.zeros, (self.hidden_size,))
        tubes = video.reshape(batch, frames // pt, pt, height // ph, ph, width // pw, pw, channels)
        dtype = self.dtype or video.dtype
        out = jnp.einsum("btihjwkc,ijkcd->bthwd", tubes.astype(dtype), kernel.astype(dtype))
        return out + bias.astype(dtype)


class EncoderBlock(nn.Module):
    """Pre-LN Transformer block: x + SD(Dropout(Attn(LN(x)))), then x + SD(MLP(LN(x))).

    `attention` is the attention module's class (or any callable building it): it is built
    with `num_heads`, `dropout_rate`, `dtype` and `name`, and called as
    `(y, deterministic=...)`. Any module with `layers.MultiHeadAttention`'s parameters
    (ViViT's factorised dot-product attention, for one) keeps a ViT block's parameter tree.
    `attention_branch` and `mlp_branch` are the two residual branches before stochastic
    depth, for blocks that arrange them differently.

    `exact_gelu` and `layer_norm_epsilon`: the JAX originals (vit_jax, big_vision, Scenic)
    use the tanh GELU and epsilon 1e-6 (the defaults); timm and Hugging Face ViTs the exact
    (erf) GELU, and Hugging Face epsilon 1e-12. Their weights give the same logits only with
    their settings (about 2e-4 relative apart otherwise). `activation`, if given, replaces
    the GELU (CLIP's `layers.quick_gelu`).

    `causal`: each token attends only to itself and earlier tokens (a text model's
    autoregressive mask, CLIP's text tower); the attention is then called with a `[L, L]`
    boolean `mask=` as well.
    """

    mlp_dim: int
    num_heads: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    dtype: jnp.dtype | None = None
    attention: Callable[..., nn.Module] = layers.MultiHeadAttention
    exact_gelu: bool = False
    layer_norm_epsilon: float = 1e-6
    activation: Callable | None = None
    causal: bool = False

    def attention_branch(self, x, deterministic: bool, norm_name: str, attention_name: str):
        """Dropout(Attn(LN(x)))."""
        y = nn.LayerNorm(self.layer_norm_epsilon, dtype=self.dtype, name=norm_name)(x)
        mask = {}
        if self.causal:
            length = y.shape[-2]
            mask["mask"] = jnp.tril(jnp.ones((length, length), bool))
        y = self.attention(
            num_heads=self.num_heads,
            dropout_rate=self.attention_dropout_rate,
            dtype=self.dtype,
            name=attention_name,
        )(y, deterministic=deterministic, **mask)
        return nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)

    def mlp_branch(self, x, deterministic: bool, norm_name: str, mlp_name: str):
        """MLP(LN(x)) (the MLP has its own dropout)."""
        y = nn.LayerNorm(self.layer_norm_epsilon, dtype=self.dtype, name=norm_name)(x)
        return layers.MlpBlock(
            mlp_dim=self.mlp_dim,
            dropout_rate=self.dropout_rate,
            activation=self.activation
            or functools.partial(nn.gelu, approximate=not self.exact_gelu),
            dtype=self.dtype,
            name=mlp_name,
        )(y, deterministic=deterministic)

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        y = self.attention_branch(x, deterministic, "LayerNorm_0", "MultiHeadDotProductAttention_1")
        x = x + layers.StochasticDepth(self.stochastic_depth)(y, deterministic)
        y = self.mlp_branch(x, deterministic, "LayerNorm_2", "MlpBlock_3")
        return x + layers.StochasticDepth(self.stochastic_depth)(y, deterministic)


#: `remat` values: nothing recomputed; everything recomputed; matmul results kept and the
#: rest (norms, activations, softmax) recomputed.
REMAT_POLICIES = ("none", "full", "dots")


def remat_policy(remat: bool | str) -> str:
    """`remat` as one of REMAT_POLICIES (False -> 'none', True -> 'full')."""
    policy = {False: "none", True: "full"}.get(remat, remat) if isinstance(remat, bool) else remat
    if policy not in REMAT_POLICIES:
        raise ValueError(f"remat must be a bool or one of {REMAT_POLICIES}, got {remat!r}.")
    return policy


def rematerialised(block_cls: type[nn.Module], policy: bool | str = "full") -> type[nn.Module]:
    """`block_cls` whose activations are recomputed in the backward pass instead of kept
    ('full'), or all but its matmul results ('dots').

    Trades one more forward pass of the block for activation memory that no longer grows
    with the number of layers (where the compiler exploits it: XLA:CPU was measured not to);
    parameter names are unchanged, so checkpoints load either way. The block must take
    `(x, deterministic)` positionally: `deterministic` (argument 2, after the module itself)
    is static.
    """
    policy = remat_policy(policy)
    if policy == "none":
        return block_cls
    saveable = jax.checkpoint_policies.checkpoint_dots if policy == "dots" else None
    return nn.remat(block_cls, static_argnums=(2,), policy=saveable)


#: Parameter paths inside a layer-scanned encoder (`ScannedBlocks`, named `encoderblock`):
#: their axis 0 is the layer axis.
SCANNED_PATH = re.compile(r"(^|/)encoderblock/")


class ScannedBlocks(nn.Module):
    """`num_layers` identical blocks as one `nn.scan`: the block is traced and compiled once
    whatever the depth. Parameters are stacked on a leading layer axis under
    `encoderblock/...` (`stack_layers` / `unstack_layers` convert to and from the per-layer
    names `encoderblock_i/...`). Every layer has the same stochastic-depth rate."""

    block: type[nn.Module]
    num_layers: int
    block_kwargs: Mapping[str, Any] = FrozenDict()

    def setup(self):
        self.inner = self.block(**self.block_kwargs)
        nn.share_scope(self, self.inner)  # the block's parameters directly under this scope

    def __call__(self, x, deterministic: bool):
        return self.inner(x, deterministic), None


def stack_layers(flat: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict:
    """Flat '/'-named arrays converted to the layer layout of `wanted` (flat names ->
    arrays or shapes): per-layer `encoderblock_i/...` stacked where `wanted` has a scanned
    `encoderblock/...`, and a scanned one split where `wanted` has per-layer names. Names
    already in `wanted`'s layout are kept as they are."""
    out = dict(flat)
    for name, value in wanted.items():
        if name in out:
            continue
        match = re.search(r"(^|/)encoderblock(_(\d+))?/", name)
        if match is None:
            continue
        head, tail = name[: match.start()] + match.group(1), name[match.end() :]
        if match.group(2) is None:  # scanned in the model: stack the checkpoint's layers
            layers = (value if isinstance(value, tuple) else np.shape(value))[0]
            names = [f"{head}encoderblock_{i}/{tail}" for i in range(layers)]
            if all(n in out for n in names):
                out[name] = np.stack([np.asarray(out.pop(n)) for n in names])
        else:  # per-layer in the model: one slice of the checkpoint's stack
            stacked = f"{head}encoderblock/{tail}"
            if stacked in out:
                out[name] = np.asarray(out[stacked])[int(match.group(3))]
    used_stacks = {
        f"{n[: m.start()]}{m.group(1)}encoderblock/{n[m.end() :]}"
        for n in wanted
        if (m := re.search(r"(^|/)encoderblock_\d+/", n))
    }
    return {k: v for k, v in out.items() if k not in used_stacks or k in wanted}


class Encoder(nn.Module):
    """Position embedding, dropout, `num_layers` blocks and a final LayerNorm.

    Tokens are `[B, L, D]`, or a grid `[B, ..., D]` (ViViT's `[B, t, s, D]`) that the blocks
    see as it is and the position embedding sees flattened to `[B, L, D]`. Block i is
    `block(mlp_dim, num_heads, dropout_rate, attention_dropout_rate, stochastic_depth,
    dtype, **block_kwargs)`, named `encoderblock_i`, with a drop-path rate of i/(L-1) of
    `stochastic_depth`.

    Attributes:
      posemb: 'learned', 'sincos2d' (fixed; needs `posemb_grid`, the (h, w) patch grid) or
        'none' (the caller adds its own, e.g. before a LayerNorm of its own, as CLIP does).
      has_cls_token: the first token is a class token (no sin-cos embedding is added to it).
      remat: recompute each block's activations in the backward pass: True / 'full', or
        'dots' to keep matmul results (`rematerialised`).
      scan_layers: run the blocks as one `nn.scan` (`ScannedBlocks`): compile time and
        program size independent of depth; parameters stacked under `encoderblock`.
        Needs `stochastic_depth` 0 (its rate differs per layer).
      block, block_kwargs: the block's class and its extra constructor arguments (e.g.
        `{"attention": SomeAttention}` for `EncoderBlock`).
    """

    num_layers: int
    mlp_dim: int
    num_heads: int
    posemb: str = "learned"
    posemb_grid: tuple[int, int] | None = None
    has_cls_token: bool = False
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    remat: bool | str = False
    scan_layers: bool = False
    dtype: jnp.dtype | None = None
    block: type[nn.Module] = EncoderBlock
    block_kwargs: Mapping[str, Any] = FrozenDict()
    layer_norm_epsilon: float = 1e-6  # of `encoder_norm`; the blocks' is in `block_kwargs`

    def __post_init__(self):
        self.block_kwargs = FrozenDict(self.block_kwargs)  # a Flax module must hash
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        shape = x.shape
        x = x.reshape(shape[0], -1, shape[-1])
        if self.posemb == "learned":
            x = layers.AddLearnedPositionEmbedding(name="posembed_input")(x)
        elif self.posemb == "sincos2d":
            if self.posemb_grid is None:
                raise ValueError("posemb='sincos2d' needs posemb_grid, the (h, w) patch grid.")
            table = layers.sincos_position_embedding_2d(*self.posemb_grid, shape[-1])
            if self.has_cls_token:
                table = jnp.concatenate([jnp.zeros_like(table[:, :1]), table], axis=1)
            x = x + table.astype(x.dtype)
        elif self.posemb != "none":
            raise ValueError(
                f"ViT posemb must be 'learned', 'sincos2d' or 'none', got {self.posemb!r}."
            )
        x = nn.Dropout(self.dropout_rate)(x.reshape(shape), deterministic=not train)
        block = rematerialised(self.block, self.remat)
        if self.scan_layers:
            if self.stochastic_depth:
                raise ValueError(
                    "scan_layers runs identical blocks, but stochastic_depth gives each "
                    "layer its own rate: set stochastic_depth=0 or scan_layers=False."
                )
            scan = nn.scan(
                ScannedBlocks,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=self.num_layers,
            )
            kwargs = dict(
                mlp_dim=self.mlp_dim,
                num_heads=self.num_heads,
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                dtype=self.dtype,
                **self.block_kwargs,
            )
            x, _ = scan(block, self.num_layers, FrozenDict(kwargs), name="encoderblock")(
                x, not train
            )
            return nn.LayerNorm(self.layer_norm_epsilon, dtype=self.dtype, name="encoder_norm")(x)
        for i in range(self.num_layers):
            x = block(
                mlp_dim=self.mlp_dim,
                num_heads=self.num_heads,
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                stochastic_depth=self.stochastic_depth * i / max(self.num_layers - 1, 1),
                dtype=self.dtype,
                name=f"encoderblock_{i}",
                **self.block_kwargs,
            )(x, not train)
        return nn.LayerNorm(self.layer_norm_epsilon, dtype=self.dtype, name="encoder_norm")(x)


class MAPHead(nn.Module):
    """Multi-head attention pooling: a learned probe attends over the tokens."""

    num_heads: int
    mlp_dim: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x):
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, x.shape[-1]))
        probe = jnp.tile(probe.astype(x.dtype), (x.shape[0], 1, 1))
        x = layers.MultiHeadAttention(num_heads=self.num_heads, dtype=self.dtype)(probe, x)
        y = nn.LayerNorm(dtype=self.dtype)(x)
        x = x + layers.MlpBlock(mlp_dim=self.mlp_dim, dtype=self.dtype)(y)
        return x[:, 0]


def add_class_token(module: nn.Module, x, name: str = "cls"):
    """Prepends a learned class token to `[B, L, D]` tokens: `[B, 1 + L, D]`.

    The token is the zero-initialised parameter `name` of `module`, the calling module (call
    this from its compact method), so checkpoints keep it at `<module>/cls`.
    """
    cls = module.param(name, nn.initializers.zeros, (1, 1, x.shape[-1])).astype(x.dtype)
    return jnp.concatenate([jnp.tile(cls, (x.shape[0], 1, 1)), x], axis=1)


def pool(
    x,
    classifier: str,
    *,
    num_heads: int | None = None,
    mlp_dim: int | None = None,
    dtype: jnp.dtype | None = None,
):
    """Encoder output `[B, ..., D]` -> `[B, D]`, by `classifier` (one of POOLINGS).

    'token': the class token `add_class_token` prepended; 'gap': the mean over every token
    axis; 'map': a `MAPHead` (of `num_heads` and `mlp_dim`) named `MAPHead_0` in the calling
    module (call this from its compact method).
    """
    if classifier == "token":
        return x[:, 0]
    if classifier == "gap":
        return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
    if classifier == "map":
        if num_heads is None or mlp_dim is None:
            raise ValueError("MAP pooling needs num_heads and mlp_dim.")
        return MAPHead(num_heads, mlp_dim, dtype, name="MAPHead_0")(x)
    raise ValueError(f"classifier must be one of {POOLINGS}, got {classifier!r}.")


def classification_head(
    x, num_classes: int | None, *, representation_size: int | None = None, bias_init=0.0
):
    """Pooled `[B, D]` -> float32 logits `[B, num_classes]`, in the calling module.

    An optional pre-logits Dense + tanh of `representation_size` (`pre_logits`), then the
    zero-initialised Dense `head` with bias `bias_init` (-10 for multi-label). With no
    `num_classes` (0 or None) it returns the (pre-logits) representation instead.
    """
    if representation_size:
        x = nn.tanh(nn.Dense(representation_size, name="pre_logits")(x))
    if not num_classes:
        return x
    head = nn.Dense(
        num_classes,
        kernel_init=nn.initializers.zeros,
        bias_init=nn.initializers.constant(bias_init),
        name="head",
    )
    return head(x).astype(jnp.float32)
