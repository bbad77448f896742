"""The hybrid ViT: Hugging Face's BiT backbone ('bottleneck' units, 'SAME' padding) feeding
its ViT (1x1 patches), loaded from an official-layout hybrid .npz, gives the same logits;
the R50+ViT-B/16 parameter count from a closed form; resolution change, head replacement
and bad files through `init_from`; training through the core trainer."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scenic.common_lib import config_utils, runner
from scenic.common_lib.debug_utils import count_parameters
from scenic.train_lib import pretrained_init
from scenic.train_lib.pretrained_init import PretrainedInitError
from scenic_baselines import bit_weights, vit_hybrid
from scenic_baselines.models import MODELS


def closed_form_hybrid_count(
    image_size, stages=(3, 4, 9), width=64, hidden=768, layers=12, mlp=3072, classes=1000
):
    """Parameters of R50+ViT-B/16 counted by hand. ResNet: bias-free convolutions, a
    GroupNorm scale and bias after each (the root's too; post-activation units). ViT: the
    1x1 patch embedding (with bias), class token, learned position embedding of 1 + grid^2
    tokens, per block two LayerNorms, q/k/v/out projections and a two-layer MLP (all with
    biases), the final LayerNorm and the head."""
    total = 7 * 7 * 3 * width + 2 * width
    cin = width
    for stage, units in enumerate(stages):
        mid, out = width * 2**stage, 4 * width * 2**stage
        for unit in range(units):
            total += cin * mid + 2 * mid + 9 * mid * mid + 2 * mid + mid * out + 2 * out
            if unit == 0:
                total += cin * out + 2 * out
            cin = out
    grid = image_size // 2 ** (1 + len(stages))
    block = (
        2 * 2 * hidden + 4 * (hidden * hidden + hidden) + hidden * mlp + mlp + mlp * hidden + hidden
    )
    vit = cin * hidden + hidden + hidden + (1 + grid * grid) * hidden + layers * block
    return total + vit + 2 * hidden + hidden * classes + classes


def abstract_params(model, shape):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))["params"]


def test_r50_b16_has_the_closed_form_parameter_count():
    model = vit_hybrid.ViTHybrid(1000)
    params = abstract_params(model, (1, 224, 224, 3))
    assert count_parameters(params) == closed_form_hybrid_count(224) == 98_659_112  # "98M"
    assert params["embedding"]["kernel"].shape == (1, 1, 1024, 768)
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 197, 768)
    assert params["gn_root"]["scale"].shape == (64,)


def test_r50_b16_imagenet_config(tmp_path):
    config = config_utils.load_config("vit_r50_b16_imagenet", "scenic_baselines.configs")
    config.init_from.checkpoint = str(tmp_path)  # the R50+ViT-B_16.npz, set on the command line
    config, model_cls = runner.resolve_config(config, MODELS)
    assert model_cls is MODELS["vit_hybrid_classification"]
    model = vit_hybrid.build_vit_hybrid(config.model, 1000)
    size = config.dataset_configs.image_size
    assert count_parameters(abstract_params(model, (1, size, size, 3))) == closed_form_hybrid_count(
        size
    )
    assert model.resnet_block_sizes == (3, 4, 9) and model.patch_size == (1, 1)


# ------------------------------------------------------- Hugging Face, official .npz layout

STAGES, WIDTH, GROUPS = (2, 1, 1), 16, 4
VIT = dict(hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)
IMAGES = np.random.default_rng(0).normal(size=(2, 48, 44, 3)).astype(np.float32)


def randomized_hf_hybrid(grid, classes=5, channels=3):
    """HF's hybrid pieces with random weights: `BitModel` with post-activation
    ('bottleneck') units and TF 'SAME' padding, whose last feature map feeds a
    `ViTForImageClassification` with 1x1 patches. Its tanh GELU and LayerNorm epsilon 1e-6
    are the JAX originals'. GroupNorm and LayerNorm affine parameters are random, and
    kernels get a per-channel offset (so weight standardisation's mean subtraction
    matters)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    bit_config = transformers.BitConfig(
        layer_type="bottleneck",
        global_padding="SAME",
        embedding_dynamic_padding=True,
        num_channels=channels,
        embedding_size=WIDTH,
        hidden_sizes=[4 * WIDTH * 2**i for i in range(len(STAGES))],
        depths=list(STAGES),
        num_groups=GROUPS,
    )
    vit_config = transformers.ViTConfig(
        hidden_size=VIT["hidden_size"],
        num_hidden_layers=VIT["num_layers"],
        num_attention_heads=VIT["num_heads"],
        intermediate_size=VIT["mlp_dim"],
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        image_size=grid,
        patch_size=1,
        num_channels=bit_config.hidden_sizes[-1],
        num_labels=classes,
    )
    torch.manual_seed(0)
    backbone = transformers.BitModel(bit_config).eval()
    head = transformers.ViTForImageClassification(vit_config).eval()
    with torch.no_grad():
        for name, param in [*backbone.named_parameters(), *head.named_parameters()]:
            if "norm" in name:
                param.normal_(0.0, 0.3) if name.endswith("bias") else param.uniform_(0.5, 1.5)
            elif param.ndim == 4 and name.startswith(("embedder", "encoder")):
                param.add_(0.5 * param.std() * torch.randn(param.shape[0], 1, 1, 1))
    return backbone, head


def hf_hybrid_logits(backbone, head, images):
    import torch

    with torch.no_grad():
        features = backbone(torch.from_numpy(images).permute(0, 3, 1, 2)).last_hidden_state
        return head(features).logits.numpy()


def official_hybrid_npz(backbone, head, path):
    """Writes the HF weights under the official R50+ViT-B_16.npz names and layouts (vit_jax
    `models_vit.py` / `models_resnet.py`): HWIO kernels, GroupNorm scale / bias as
    [1, 1, 1, C] (saved by pre-0.3.6 Flax), attention kernels [D, heads, head_dim] and
    [heads, head_dim, D]."""
    sd = {k: v.detach().numpy() for k, v in backbone.state_dict().items()}
    out = {"conv_root/kernel": sd["embedder.convolution.weight"].transpose(2, 3, 1, 0)}
    gn = lambda v: v.reshape(1, 1, 1, -1)
    out["gn_root/scale"], out["gn_root/bias"] = (
        gn(sd["embedder.norm.weight"]),
        gn(sd["embedder.norm.bias"]),
    )
    for key, value in sd.items():
        parts = key.split(".")
        if parts[:2] != ["encoder", "stages"]:
            continue
        unit = f"block{int(parts[2]) + 1}/unit{int(parts[4]) + 1}"
        layer, leaf = parts[5], parts[-1]
        if layer == "downsample":
            layer = "conv_proj" if parts[6] == "conv" else "gn_proj"
        elif layer.startswith("norm"):
            layer = f"gn{layer[-1]}"
        if layer.startswith("conv"):
            out[f"{unit}/{layer}/kernel"] = value.transpose(2, 3, 1, 0)
        else:
            out[f"{unit}/{layer}/{'scale' if leaf == 'weight' else 'bias'}"] = gn(value)
    sd = {k: v.detach().numpy() for k, v in head.state_dict().items()}
    d, h = VIT["hidden_size"], VIT["num_heads"]
    out["embedding/kernel"] = sd["vit.embeddings.patch_embeddings.projection.weight"].transpose(
        2, 3, 1, 0
    )
    out["embedding/bias"] = sd["vit.embeddings.patch_embeddings.projection.bias"]
    out["cls"] = sd["vit.embeddings.cls_token"]
    out["Transformer/posembed_input/pos_embedding"] = sd["vit.embeddings.position_embeddings"]
    for i in range(VIT["num_layers"]):
        hf, ours = f"vit.layers.{i}.", f"Transformer/encoderblock_{i}/"
        for hf_norm, norm in (
            ("layernorm_before", "LayerNorm_0"),
            ("layernorm_after", "LayerNorm_2"),
        ):
            out[ours + f"{norm}/scale"] = sd[hf + f"{hf_norm}.weight"]
            out[ours + f"{norm}/bias"] = sd[hf + f"{hf_norm}.bias"]
        attention = ours + "MultiHeadDotProductAttention_1/"
        for proj, name in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
            out[attention + f"{name}/kernel"] = sd[hf + f"attention.{proj}.weight"].T.reshape(
                d, h, -1
            )
            out[attention + f"{name}/bias"] = sd[hf + f"attention.{proj}.bias"].reshape(h, -1)
        out[attention + "out/kernel"] = sd[hf + "attention.o_proj.weight"].T.reshape(h, -1, d)
        out[attention + "out/bias"] = sd[hf + "attention.o_proj.bias"]
        for fc, dense in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            out[ours + f"MlpBlock_3/{dense}/kernel"] = sd[hf + f"mlp.{fc}.weight"].T
            out[ours + f"MlpBlock_3/{dense}/bias"] = sd[hf + f"mlp.{fc}.bias"]
    out["Transformer/encoder_norm/scale"] = sd["vit.layernorm.weight"]
    out["Transformer/encoder_norm/bias"] = sd["vit.layernorm.bias"]
    out["head/kernel"], out["head/bias"] = sd["classifier.weight"].T, sd["classifier.bias"]
    np.savez(path, **out)
    return out


def tiny_hybrid(classes=5, **overrides):
    """The test's hybrid with HF's GroupNorm epsilon and weight standardisation."""
    settings = dict(
        resnet_block_sizes=STAGES,
        resnet_width=WIDTH,
        num_groups=GROUPS,
        gn_epsilon=1e-5,
        ws_epsilon=1e-8,
        ws_formula="sqrt(var+eps)",
        **VIT,
    )
    return vit_hybrid.ViTHybrid(classes, **{**settings, **overrides})


def init_from(params, path, **settings):
    """What the trainer does with `config.init_from` (the format detected from the file)."""
    config = ml_collections.ConfigDict({"checkpoint": str(path), **settings})
    return pretrained_init.from_config(params, config)


@pytest.fixture(scope="module")
def hf_hybrid_npz(tmp_path_factory):
    """(HF backbone, HF ViT, path of the official-layout .npz) for 48 x 44 images: a 3 x 3
    feature map, through even sizes and an odd one (11) at the stride-2 layers."""
    backbone, head = randomized_hf_hybrid(grid=3)
    path = tmp_path_factory.mktemp("hybrid") / "R-tiny+ViT.npz"
    official_hybrid_npz(backbone, head, path)
    return backbone, head, path


def test_official_npz_gives_hugging_face_logits(hf_hybrid_npz):
    """Same logits to 1e-4 as HF's backbone + ViT, the weights read by `init_from` from the
    official layout (GroupNorm [1, 1, 1, C] squeezed). Our model with symmetric (PyTorch)
    padding instead of 'SAME' is the negative control: the padding convention matters."""
    backbone, head, path = hf_hybrid_npz
    assert pretrained_init.detect_format(path) == "vit_hybrid_npz"
    model = tiny_hybrid()
    params, summary = init_from(abstract_params(model, IMAGES.shape), path)
    assert not summary.missing and not summary.unused
    ours = jax.jit(model.apply)({"params": params}, IMAGES)
    reference = hf_hybrid_logits(backbone, head, IMAGES)
    assert np.abs(reference).max() > 0
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-4 * np.abs(reference).max())
    symmetric = jax.jit(tiny_hybrid(padding="symmetric").apply)({"params": params}, IMAGES)
    assert np.abs(symmetric - reference).max() > 1e-2 * np.abs(reference).max()


def random_like(abstract, seed=1):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), abstract)


def test_new_resolution_new_head_and_dropped_pre_logits(hf_hybrid_npz, tmp_path):
    """Fine-tuning at 96 x 96 (a 6 x 6 grid instead of 3 x 3) for 3 classes from a file that
    also holds an ImageNet-21k style `pre_logits` layer: the position embedding is resampled
    (class token kept), the head stays as initialised, pre_logits is left out, every other
    array loads as it is."""
    _, _, path = hf_hybrid_npz
    arrays = bit_weights.read_npz(path)
    arrays["pre_logits/kernel"] = np.ones((32, 32), np.float32)
    arrays["pre_logits/bias"] = np.ones(32, np.float32)
    np.savez(tmp_path / "with_pre_logits.npz", **arrays)
    model = tiny_hybrid(classes=3)
    fresh = random_like(abstract_params(model, (1, 96, 96, 3)))
    params, summary = init_from(fresh, tmp_path / "with_pre_logits.npz", reinit=("head/.*",))
    posemb = "Transformer/posembed_input/pos_embedding"
    assert summary.resized == {posemb: ((1, 10, 32), (1, 37, 32))}
    assert sorted(summary.reinitialised) == ["head/bias", "head/kernel"]
    assert not summary.unused and "pre_logits" not in params
    new = params["Transformer"]["posembed_input"]["pos_embedding"]
    np.testing.assert_array_equal(new[:, 0], arrays[posemb][:, 0])
    np.testing.assert_array_equal(params["head"]["kernel"], fresh["head"]["kernel"])
    np.testing.assert_array_equal(params["gn_root"]["scale"], arrays["gn_root/scale"].reshape(-1))
    np.testing.assert_array_equal(
        params["block1"]["unit2"]["conv2"]["kernel"], arrays["block1/unit2/conv2/kernel"]
    )


def test_a_wrong_file_gets_one_error_naming_every_bad_array(hf_hybrid_npz, tmp_path):
    _, _, path = hf_hybrid_npz
    arrays = bit_weights.read_npz(path)
    del arrays["block2/unit1/gn_proj/bias"]
    del arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel"]
    arrays["block3/unit1/conv2/kernel"] = np.zeros((3, 3, 64, 63), np.float32)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(PretrainedInitError) as error:
        init_from(abstract_params(tiny_hybrid(), IMAGES.shape), tmp_path / "bad.npz")
    message = str(error.value)
    assert bit_weights.FORMATS["vit_hybrid_npz"] in message
    for name in (
        "block2/unit1/gn_proj/bias",
        "Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel",
        "block3/unit1/conv2/kernel: checkpoint (3, 3, 64, 63)",
    ):
        assert name in message, name


# ------------------------------------------------------- training


def test_digits_config_resolves():
    config = config_utils.load_config("vit_hybrid_digits", "scenic_baselines.configs")
    _, model_cls = runner.resolve_config(config, MODELS)
    assert model_cls is MODELS["vit_hybrid_classification"]
