"""ViT weights from published files: golden tests against Hugging Face's ViT (random weights,
written by the test in each published layout: the original ViT .npz, big_vision .npz
scanned and not, timm .safetensors, Hugging Face folders, original Scenic msgpack), the MAP
head against a float64 NumPy ViT, head replacement and position-embedding resizing through
the trainer's `init_from`, and one error naming every problem of a file that does not fit."""

import math

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.ndimage

from scenic.common_lib import config_utils, runner
from scenic.common_lib.config_utils import ConfigError
from scenic.train_lib import pretrained_init as pi
from scenic.train_lib import trainer
from scenic_baselines import vit, vit_weights
from scenic_baselines.models import MODELS

IMAGE, PATCH, WIDTH, LAYERS, HEADS, MLP, CLASSES = 16, 4, 32, 2, 2, 64, 5
HEAD_DIM = WIDTH // HEADS
GRID = IMAGE // PATCH
#: Child names of an encoder block: the original ViT files' (ours) and linen's (big_vision,
#: Scenic), from vit_jax's checkpoints and big_vision / Scenic's `Encoder1DBlock`.
ORIGINAL = ("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
LINEN = ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")


def vit_model(**overrides):
    kwargs = dict(num_classes=CLASSES, patch_size=(PATCH, PATCH), hidden_size=WIDTH,
                  num_layers=LAYERS, num_heads=HEADS, mlp_dim=MLP,
                  exact_gelu=True, layer_norm_epsilon=1e-12)  # Hugging Face's  # fmt: skip
    return vit.ViT(**{**kwargs, **overrides})


MODEL = vit_model()
FRESH = jax.eval_shape(lambda: MODEL.init(jax.random.key(0), jnp.zeros((1, IMAGE, IMAGE, 3))))
APPLY = jax.jit(MODEL.apply)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """A Hugging Face ViTForImageClassification with every array random (LayerNorms and
    biases too) and Hugging Face's own GELU (exact) and LayerNorm epsilon (1e-12), which
    our ViT is set to; its saved folder, the arrays
    as its files name them, random images and its logits on them."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from safetensors.numpy import load_file

    config = transformers.ViTConfig(
        image_size=IMAGE, patch_size=PATCH, num_channels=3, hidden_size=WIDTH,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=MLP,
        num_labels=CLASSES,
    )  # fmt: skip
    assert (config.hidden_act, config.layer_norm_eps) == ("gelu", 1e-12)  # HF's defaults
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif param.ndim == 2 or name.endswith("projection.weight"):
                param.copy_(torch.randn_like(param) / math.sqrt(param[0].numel()))
            else:  # biases, class token, position embeddings
                param.copy_(0.3 * torch.randn_like(param))
    folder = tmp_path_factory.mktemp("hf")
    model.save_pretrained(folder)
    images = np.random.default_rng(0).normal(size=(3, IMAGE, IMAGE, 3)).astype(np.float32)
    with torch.no_grad():
        logits = model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).logits
    state = load_file(folder / "model.safetensors")
    return {"folder": folder, "state": state, "images": images, "logits": logits.numpy()}


def relative_error(ours, reference) -> float:
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


def init_from_logits(path, images, model=MODEL, fresh=FRESH, apply=APPLY, **settings):
    """Logits of `model` with the parameters `init_from` reads from `path`."""
    config = ml_collections.ConfigDict({"checkpoint": str(path), **settings})
    params, summary = pi.from_config(fresh["params"], config)
    assert not summary.missing and not summary.unused
    return np.asarray(apply({"params": params}, images))


# ---------------------------------------------------------------- the layouts, written here


def flax_arrays(state, children=ORIGINAL):
    """The HF ViT's arrays in a Flax ViT's names and layouts (vit_jax / big_vision /
    Scenic): Dense kernels [in, out], attention [D, heads, head_dim] and [heads, head_dim, D],
    the patch convolution [kh, kw, in, out], LayerNorm `scale`."""
    ln1, attention, ln2, mlp = children

    def dense(name):
        return state[f"{name}.weight"].T, state[f"{name}.bias"]

    out = {
        "embedding/kernel": state["vit.embeddings.patch_embeddings.projection.weight"].transpose(
            2, 3, 1, 0
        ),
        "embedding/bias": state["vit.embeddings.patch_embeddings.projection.bias"],
        "cls": state["vit.embeddings.cls_token"],
        "Transformer/posembed_input/pos_embedding": state["vit.embeddings.position_embeddings"],
        "Transformer/encoder_norm/scale": state["vit.layernorm.weight"],
        "Transformer/encoder_norm/bias": state["vit.layernorm.bias"],
    }
    out["head/kernel"], out["head/bias"] = dense("classifier")
    for i in range(LAYERS):
        hf, ours = f"vit.encoder.layer.{i}.", f"Transformer/encoderblock_{i}/"
        for norm, hf_norm in ((ln1, "layernorm_before"), (ln2, "layernorm_after")):
            out[f"{ours}{norm}/scale"] = state[f"{hf}{hf_norm}.weight"]
            out[f"{ours}{norm}/bias"] = state[f"{hf}{hf_norm}.bias"]
        for projection in ("query", "key", "value"):
            kernel, bias = dense(f"{hf}attention.attention.{projection}")
            out[f"{ours}{attention}/{projection}/kernel"] = kernel.reshape(WIDTH, HEADS, HEAD_DIM)
            out[f"{ours}{attention}/{projection}/bias"] = bias.reshape(HEADS, HEAD_DIM)
        kernel, out[f"{ours}{attention}/out/bias"] = dense(f"{hf}attention.output.dense")
        out[f"{ours}{attention}/out/kernel"] = kernel.reshape(HEADS, HEAD_DIM, WIDTH)
        out[f"{ours}{mlp}/Dense_0/kernel"], out[f"{ours}{mlp}/Dense_0/bias"] = dense(
            f"{hf}intermediate.dense"
        )
        out[f"{ours}{mlp}/Dense_1/kernel"], out[f"{ours}{mlp}/Dense_1/bias"] = dense(
            f"{hf}output.dense"
        )
    return out


def big_vision_arrays(state, scanned):
    """big_vision's layout: `params/` prefix, linen numbering, `pos_embedding` at the top
    level added before the class token (so HF's class-token row moves into `cls`), blocks
    stacked on a leading axis when scanned; optimizer state beside the parameters."""
    arrays = flax_arrays(state, LINEN)
    posemb = arrays.pop("Transformer/posembed_input/pos_embedding")
    arrays["pos_embedding"] = posemb[:, 1:]
    arrays["cls"] = arrays["cls"] + posemb[:, :1]
    if scanned:
        arrays = stack_blocks(arrays)
    out = {f"params/{name}": value for name, value in arrays.items()}
    out["opt/state/count"] = np.array(7)
    out["opt/state/mu/head/kernel"] = np.zeros_like(arrays["head/kernel"])
    return out


def stack_blocks(arrays):
    """`Transformer/encoderblock_{i}/x` -> `Transformer/encoderblock/x` with a layer axis."""
    out = {k: v for k, v in arrays.items() if not k.startswith("Transformer/encoderblock_")}
    for name in (k for k in arrays if k.startswith("Transformer/encoderblock_0/")):
        rest = name.removeprefix("Transformer/encoderblock_0/")
        layers = [arrays[f"Transformer/encoderblock_{i}/{rest}"] for i in range(LAYERS)]
        out[f"Transformer/encoderblock/{rest}"] = np.stack(layers)
    return out


def timm_arrays(state, qkv_order=("query", "key", "value")):
    """timm's VisionTransformer names; its fused `attn.qkv` stacks q, k, v rows."""
    out = {
        "patch_embed.proj.weight": state["vit.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state["vit.embeddings.patch_embeddings.projection.bias"],
        "cls_token": state["vit.embeddings.cls_token"],
        "pos_embed": state["vit.embeddings.position_embeddings"],
        "norm.weight": state["vit.layernorm.weight"],
        "norm.bias": state["vit.layernorm.bias"],
        "head.weight": state["classifier.weight"],
        "head.bias": state["classifier.bias"],
    }
    parts = {"norm1": "layernorm_before", "norm2": "layernorm_after",
             "attn.proj": "attention.output.dense", "mlp.fc1": "intermediate.dense",
             "mlp.fc2": "output.dense"}  # fmt: skip
    for i in range(LAYERS):
        hf = f"vit.encoder.layer.{i}."
        for leaf in ("weight", "bias"):
            for timm_name, hf_name in parts.items():
                out[f"blocks.{i}.{timm_name}.{leaf}"] = state[f"{hf}{hf_name}.{leaf}"]
            qkv = [state[f"{hf}attention.attention.{p}.{leaf}"] for p in qkv_order]
            out[f"blocks.{i}.attn.qkv.{leaf}"] = np.concatenate(qkv)
    return out


def write_scenic_checkpoint(folder, state, step, older=False):
    """The original Scenic's `checkpoint_<step>`: a msgpack TrainState holding its ViT's
    params (linen numbering, head `output_projection`), or, older, `optimizer/target`."""
    arrays = flax_arrays(state, LINEN)
    arrays["output_projection/kernel"] = arrays.pop("head/kernel")
    arrays["output_projection/bias"] = arrays.pop("head/bias")
    params = flax.traverse_util.unflatten_dict(arrays, sep="/")
    if older:
        train_state = {
            "optimizer": {"target": params, "state": {"step": step}},
            "global_step": step,
        }
    else:
        train_state = {"params": params, "opt_state": {"0": {"count": np.array(step)}},
                       "global_step": step, "model_state": {}, "rng": np.zeros(2, np.uint32),
                       "metadata": {"chrono": {}}}  # fmt: skip
    folder.mkdir(exist_ok=True)
    (folder / f"checkpoint_{step}").write_bytes(flax.serialization.msgpack_serialize(train_state))


def save_safetensors(arrays, path):
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))


# ---------------------------------------------------------------- golden tests


def test_original_vit_npz_goes_through_the_core_npz_path(hf, tmp_path):
    path = tmp_path / "ViT-tiny.npz"
    np.savez(path, **flax_arrays(hf["state"]))
    assert pi.detect_format(path) == "npz"  # our names: nothing to convert
    assert vit_weights.detect_format(path) == "vit_npz"
    logits = init_from_logits(path, hf["images"])
    assert relative_error(logits, hf["logits"]) < 1e-4
    loaded = vit_weights.load_vit_params(path)
    for name, value in flax_arrays(hf["state"]).items():
        np.testing.assert_array_equal(loaded[name], value)


@pytest.mark.parametrize("scanned", [False, True], ids=["unscanned", "scanned"])
def test_big_vision_npz(hf, tmp_path, scanned):
    path = tmp_path / "big_vision.npz"
    np.savez(path, **big_vision_arrays(hf["state"], scanned))
    assert pi.detect_format(path) == "big_vision_npz"
    logits = init_from_logits(path, hf["images"])
    assert relative_error(logits, hf["logits"]) < 1e-4


def test_scanned_and_unscanned_big_vision_give_the_same_parameters(hf, tmp_path):
    loaded = []
    for scanned in (False, True):
        path = tmp_path / f"scanned_{scanned}.npz"
        np.savez(path, **big_vision_arrays(hf["state"], scanned))
        loaded.append(vit_weights.load_vit_params(path))
    assert sorted(loaded[0]) == sorted(loaded[1])
    for name in loaded[0]:
        np.testing.assert_array_equal(loaded[0][name], loaded[1][name])


def test_timm_safetensors_and_a_wrong_qkv_order_that_the_comparison_catches(hf, tmp_path):
    path = tmp_path / "vit_tiny.safetensors"
    save_safetensors(timm_arrays(hf["state"]), path)
    assert pi.detect_format(path) == "timm"
    assert relative_error(init_from_logits(path, hf["images"]), hf["logits"]) < 1e-4
    swapped = tmp_path / "swapped.safetensors"  # negative control: k and q rows exchanged
    save_safetensors(timm_arrays(hf["state"], qkv_order=("key", "query", "value")), swapped)
    assert relative_error(init_from_logits(swapped, hf["images"]), hf["logits"]) > 1e-2
    # Outside init_from the number of heads is not in a timm file: it is asked for.
    with pytest.raises(pi.PretrainedInitError, match="number of attention heads"):
        vit_weights.load_vit_params(path)
    assert sorted(vit_weights.load_vit_params(path, num_heads=HEADS)) == sorted(
        flax_arrays(hf["state"])
    )


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_hugging_face_folder(hf, tmp_path, weights):
    if weights == "model.safetensors":
        folder = hf["folder"]
    else:  # a state dict of tensors, as older transformers wrote it
        import torch

        folder = tmp_path / "hf_bin"
        folder.mkdir()
        (folder / "config.json").write_text((hf["folder"] / "config.json").read_text())
        tensors = {k: torch.from_numpy(np.array(v)) for k, v in hf["state"].items()}
        torch.save(tensors, folder / "pytorch_model.bin")
    assert pi.detect_format(folder) == "hf_vit"
    assert relative_error(init_from_logits(folder, hf["images"]), hf["logits"]) < 1e-4


def test_hugging_face_vit_model_pooler_is_pre_logits(hf, tmp_path):
    """A `ViTModel` file (no `vit.` prefix, a tanh pooler on the class token): its pooled
    output is our ViT's representation with `representation_size` = width and no head."""
    import torch
    import transformers

    config = transformers.ViTConfig.from_pretrained(hf["folder"])
    torch.manual_seed(1)
    model = transformers.ViTModel(config, add_pooling_layer=True).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(0.3 * torch.randn_like(param))
        pixels = torch.from_numpy(hf["images"].transpose(0, 3, 1, 2))
        pooled = model(pixel_values=pixels).pooler_output.numpy()
    model.save_pretrained(tmp_path)
    ours = vit_model(num_classes=None, representation_size=WIDTH)
    fresh = jax.eval_shape(lambda: ours.init(jax.random.key(0), jnp.zeros((1, IMAGE, IMAGE, 3))))
    got = init_from_logits(tmp_path, hf["images"], ours, fresh, jax.jit(ours.apply))
    assert relative_error(got, pooled) < 1e-4


@pytest.mark.parametrize("older", [False, True], ids=["params", "optimizer_target"])
def test_original_scenic_checkpoint(hf, tmp_path, older):
    workdir = tmp_path / "scenic_workdir"
    zeros = {k: np.zeros_like(v) for k, v in hf["state"].items()}
    write_scenic_checkpoint(workdir, zeros, step=3, older=older)  # an earlier step
    write_scenic_checkpoint(workdir, hf["state"], step=12, older=older)
    for path in (workdir, workdir / "checkpoint_12"):
        assert pi.detect_format(path) == "scenic_flax"
        assert relative_error(init_from_logits(path, hf["images"]), hf["logits"]) < 1e-4


def numpy_map_vit(p, images):
    """big_vision's ViT with MAP pooling (`pool_type='map'`, no class token), in float64
    from its published definition: patches -> embedding + pos_embedding, pre-LN blocks
    (tanh GELU, LayerNorm eps 1e-6), encoder_norm, a learned probe attending over the tokens
    followed by LayerNorm + residual MLP, then the head."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    batch = images.shape[0]
    patches = images.astype(np.float64).reshape(batch, GRID, PATCH, GRID, PATCH, 3)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, GRID * GRID, -1)
    x = patches @ p["embedding/kernel"].reshape(-1, WIDTH) + p["embedding/bias"]
    x = x + p["pos_embedding"]

    def norm(x, w):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-6) * w("scale") + w("bias")

    def attention(q_in, kv_in, w):
        q, k, v = (np.einsum("bld,dhk->blhk", inp, w(f"{n}/kernel")) + w(f"{n}/bias")
                   for inp, n in ((q_in, "query"), (kv_in, "key"), (kv_in, "value")))  # fmt: skip
        logits = np.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(HEAD_DIM)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        out = np.einsum("bhqs,bshk->bqhk", weights, v)
        return np.einsum("bqhk,hkd->bqd", out, w("out/kernel")) + w("out/bias")

    def mlp(x, w):
        h = x @ w("Dense_0/kernel") + w("Dense_0/bias")
        h = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
        return h @ w("Dense_1/kernel") + w("Dense_1/bias")

    def scope(prefix, layer=None):
        return lambda n: p[prefix + n] if layer is None else p[prefix + n][layer]

    for i in range(LAYERS):
        y = norm(x, scope("Transformer/encoderblock/LayerNorm_0/", i))
        x = x + attention(
            y, y, scope("Transformer/encoderblock/MultiHeadDotProductAttention_0/", i)
        )
        x = x + mlp(norm(x, scope("Transformer/encoderblock/LayerNorm_1/", i)),
                    scope("Transformer/encoderblock/MlpBlock_0/", i))  # fmt: skip
    x = norm(x, scope("Transformer/encoder_norm/"))
    probe = np.tile(p["MAPHead_0/probe"], (batch, 1, 1))
    pooled = attention(probe, x, scope("MAPHead_0/MultiHeadDotProductAttention_0/"))
    pooled = pooled + mlp(
        norm(pooled, scope("MAPHead_0/LayerNorm_0/")), scope("MAPHead_0/MlpBlock_0/")
    )
    return pooled[:, 0] @ p["head/kernel"] + p["head/bias"]


def test_big_vision_map_head_against_a_float64_numpy_vit(hf, tmp_path):
    model = vit_model(classifier="map", exact_gelu=False, layer_norm_epsilon=1e-6)  # big_vision
    fresh = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, IMAGE, IMAGE, 3))))
    rng = np.random.default_rng(1)
    prefix = "Transformer/encoderblock_0/"
    block = {k.removeprefix(prefix): v for k, v in flax_arrays(hf["state"], LINEN).items()
             if k.startswith(prefix)}  # fmt: skip
    map_head = {"MAPHead_0/probe": (1, 1, WIDTH)}
    for name, value in block.items():  # big_vision's MAPHead: attention, LayerNorm_0, MlpBlock_0
        if not name.startswith("LayerNorm_1/"):
            map_head[f"MAPHead_0/{name}"] = value.shape
    shapes = {"embedding/kernel": (PATCH, PATCH, 3, WIDTH), "embedding/bias": (WIDTH,),
              "pos_embedding": (1, GRID * GRID, WIDTH), "head/kernel": (WIDTH, CLASSES),
              "head/bias": (CLASSES,), "Transformer/encoder_norm/scale": (WIDTH,),
              "Transformer/encoder_norm/bias": (WIDTH,), **map_head}  # fmt: skip
    for name, value in block.items():  # scanned blocks: a leading layer axis
        shapes[f"Transformer/encoderblock/{name}"] = (LAYERS, *value.shape)
    arrays = {}
    for name, shape in shapes.items():
        scale = 1 / math.sqrt(math.prod(shape[-3:-1]) if "kernel" in name else 1)
        value = rng.normal(size=shape) * (scale if "kernel" in name else 0.3)
        arrays[name] = (1 + value if name.endswith("scale") else value).astype(np.float32)
    path = tmp_path / "map.npz"
    np.savez(path, **{f"params/{k}": v for k, v in arrays.items()})
    apply = jax.jit(model.apply)
    ours = init_from_logits(path, hf["images"], model=model, fresh=fresh, apply=apply)
    assert relative_error(ours, numpy_map_vit(arrays, hf["images"])) < 1e-4


# ---------------------------------------------------------------- through the trainer


def test_trainer_init_from_a_timm_file_with_a_new_head_and_a_larger_image(hf, tmp_path):
    """What `scenic-baselines train --config vit_digits --config.init_from....` does before
    its first step (the CLI's override strings, the runner's config checks, the trainer's
    `apply_init_from`), without the data pipeline and step compilation: digits' 10 classes
    at 24 px from 5-class weights at 16 px. The encoder is as written, the head fresh
    (zero), the position embedding resampled as big_vision does (scipy.ndimage.zoom,
    order 1, class token kept)."""
    path = tmp_path / "vit_tiny.safetensors"
    save_safetensors(timm_arrays(hf["state"]), path)
    overrides = [f"init_from.checkpoint={path}", "init_from.reinit=head/.*",
                 "dataset_configs.image_size=24", "dataset_configs.channels=3",
                 f"model.hidden_size={WIDTH}", f"model.num_layers={LAYERS}",
                 f"model.num_heads={HEADS}", f"model.mlp_dim={MLP}"]  # fmt: skip
    config = config_utils.load_config("vit_digits", "scenic_baselines.configs")
    config, model_cls = runner.resolve_config(config, MODELS, overrides)
    meta_data = {"num_classes": 10, "input_shape": (-1, 24, 24, 3), "input_dtype": np.float32}
    model, _ = trainer.build_model(model_cls, config, meta_data)
    tx, _ = trainer.make_optimizer(config, num_steps=1000)
    state = trainer.initialize_state(model, config, jax.random.key(0), tx)
    loaded = pi.flatten(trainer.apply_init_from(state, config, tx, model).params)
    written = flax_arrays(hf["state"])
    posemb_name = "Transformer/posembed_input/pos_embedding"
    for name, value in written.items():
        if not name.startswith(("head/", posemb_name)):
            np.testing.assert_array_equal(loaded[name], value, err_msg=name)
    assert loaded["head/kernel"].shape == (WIDTH, 10) and not np.any(loaded["head/kernel"])
    old = written[posemb_name].astype(np.float64)
    grid = scipy.ndimage.zoom(
        old[0, 1:].reshape(GRID, GRID, WIDTH), (6 / GRID, 6 / GRID, 1), order=1
    )
    expected = np.concatenate([old[:, :1], grid.reshape(1, 36, WIDTH)], axis=1)
    np.testing.assert_allclose(loaded[posemb_name], expected, rtol=1e-6, atol=1e-6)


def test_vit_b16_imagenet_config_takes_a_checkpoint_and_format(hf):
    config = config_utils.load_config("vit_b16_imagenet", "scenic_baselines.configs")
    overrides = [f"init_from.checkpoint={hf['folder']}", "init_from.format=hf_vit",
                 "init_from.reinit=head/.*"]  # fmt: skip
    config, _ = runner.resolve_config(config, MODELS, overrides)
    assert config.init_from.format == "hf_vit"
    config = config_utils.load_config("vit_b16_imagenet", "scenic_baselines.configs")
    with pytest.raises(
        ConfigError, match="init_from.format 'hf-vit' is unknown. Did you mean 'hf_vit'"
    ):
        runner.resolve_config(config, MODELS, [*overrides[:1], "init_from.format=hf-vit"])


# ---------------------------------------------------------------- files that do not fit


def from_config(path, **settings):
    config = ml_collections.ConfigDict({"checkpoint": str(path), **settings})
    return pi.from_config(FRESH["params"], config)


def test_missing_and_mis_shaped_arrays_are_named_in_one_error(hf, tmp_path):
    arrays = timm_arrays(hf["state"])
    del arrays["blocks.1.mlp.fc2.weight"], arrays["norm.bias"]
    arrays["blocks.0.attn.qkv.weight"] = arrays["blocks.0.attn.qkv.weight"][:, :-1]
    arrays["blocks.0.attn.ls1.gamma"] = np.ones(WIDTH, np.float32)  # layer scale: not ours
    path = tmp_path / "broken.safetensors"
    save_safetensors(arrays, path)
    with pytest.raises(pi.PretrainedInitError) as info:
        from_config(path)
    message = str(info.value)
    assert "read as timm ViT .safetensors (format 'timm')" in message
    assert "4 problems" in message
    assert f"blocks.1.mlp.fc2.weight: missing (expected ({WIDTH}, {MLP}))" in message
    assert f"norm.bias: missing (expected ({WIDTH},))" in message
    assert f"blocks.0.attn.qkv.weight: (96, 31), expected (96, {WIDTH})" in message
    assert "blocks.0.attn.ls1.gamma: not part of this format's ViT" in message


def test_scanned_big_vision_with_a_mis_shaped_layer_norm(hf, tmp_path):
    arrays = big_vision_arrays(hf["state"], scanned=True)
    name = "params/Transformer/encoderblock/LayerNorm_1/scale"
    arrays[name] = arrays[name][:, :-2]
    path = tmp_path / "broken.npz"
    np.savez(path, **arrays)
    with pytest.raises(pi.PretrainedInitError) as info:
        from_config(path)
    assert "read as big_vision ViT .npz (format 'big_vision_npz'): 1 problem:" in str(info.value)
    expected = f"Transformer/encoderblock/LayerNorm_1/scale: (2, 30), expected (2, {WIDTH})"
    assert str(info.value).endswith(expected)


def test_a_file_of_another_format_is_reported_as_read(hf, tmp_path):
    with pytest.raises(pi.PretrainedInitError, match=r"read as timm .* none of its 40 arrays "
                       r"belongs to this format \(it holds e\.g\. classifier\.bias"):  # fmt: skip
        from_config(hf["folder"] / "model.safetensors", format="timm")


def test_the_core_path_lists_every_problem_of_an_original_vit_npz(hf, tmp_path):
    arrays = flax_arrays(hf["state"])
    del arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel"]
    arrays["Transformer/posembed_input/pos_embedding"] = arrays[
        "Transformer/posembed_input/pos_embedding"
    ][:, :-2]
    path = tmp_path / "ViT.npz"
    np.savez(path, **arrays)
    with pytest.raises(pi.PretrainedInitError) as info:
        from_config(path)
    message = str(info.value)
    assert "read as flat .npz of '/'-joined parameter names (format 'npz')" in message
    assert "Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel: missing in checkpoint" in message
    assert f"pos_embedding: checkpoint (1, 15, {WIDTH}) != model (1, 17, {WIDTH})" in message


def test_a_file_two_registered_formats_claim_must_be_named(hf, tmp_path, monkeypatch):
    """The registry's contract: one detector per file, else the user picks the format."""
    path = tmp_path / "vit_tiny.safetensors"
    save_safetensors(timm_arrays(hf["state"]), path)
    claims_all = pi.CheckpointFormat("claims_all", "a greedy format", lambda p: True, None)
    monkeypatch.setitem(pi._FORMATS, "claims_all", claims_all)
    with pytest.raises(pi.PretrainedInitError, match=r"fits several formats \(timm, claims_all\)"):
        from_config(path)
    assert relative_error(init_from_logits(path, hf["images"], format="timm"), hf["logits"]) < 1e-4
    with pytest.raises(ValueError, match="'timm' is already registered"):
        pi.register_format(pi.CheckpointFormat("timm", "another timm", lambda p: False, None))
    pi.register_format(vit_weights.INIT_FROM_FORMATS["timm"])  # the same one again: no-op


def test_unreadable_files_and_unknown_formats(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_text("not weights")
    with pytest.raises(pi.PretrainedInitError, match="Cannot tell the format .* timm: timm ViT"):
        from_config(path)
    with pytest.raises(pi.PretrainedInitError, match="is in none of the ViT weight formats"):
        vit_weights.load_vit_params(path)
    with pytest.raises(ConfigError, match="init_from.format 'tim' is unknown. Did you mean 'timm'"):
        pi.check_config(ml_collections.ConfigDict({"checkpoint": str(path), "format": "tim"}))
    assert {"big_vision_npz", "timm", "hf_vit", "scenic_flax", "npz"} <= set(pi.list_formats())


def test_cli_refuses_a_file_of_no_known_layout_before_writing(tmp_path, capsys):
    from scenic_baselines.cli import main

    path = tmp_path / "weights.safetensors"
    path.write_text("garbage")
    workdir = tmp_path / "run"
    argv = ["train", "--config", "vit_digits", "--workdir", str(workdir),
            f"--config.init_from.checkpoint={path}"]  # fmt: skip
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "Cannot tell the format of pretrained file" in error[0], error
    assert not workdir.exists()
