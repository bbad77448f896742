"""CLIP from Hugging Face `CLIPModel` folders: golden tests against transformers' own
CLIPModel (every array random, saved with `save_pretrained`, and as a `.bin` state dict
as older transformers wrote it), under each text-pooling rule (OpenAI's highest id behind
the legacy `eos_token_id` 2, Hugging Face's first EOS id) and both activations; negative
controls that the comparison catches (ln_pre left out, the exact GELU for QuickGELU, the
other pooling rule); and one error naming every tensor that does not fit."""

import json
import math

import jax
import numpy as np
import pytest

from scenic.train_lib.pretrained_init import PretrainedInitError
from scenic_baselines import clip, clip_weights

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

WIDTH, LAYERS, HEADS, MLP, EMBED = 32, 2, 4, 64, 16
IMAGE, PATCH, VOCAB, CONTEXT = 32, 8, 100, 16
BOS = VOCAB - 2
#: name -> (config eos_token_id, the EOT id the tokens carry, hidden_act, our eos_token_id)
CASES = {
    "openai_legacy_eos_2": (2, VOCAB - 1, "quick_gelu", None),
    "first_eos_id": (VOCAB - 1, VOCAB - 1, "quick_gelu", VOCAB - 1),
    "eos_below_other_ids": (50, 50, "quick_gelu", 50),
    "exact_gelu": (VOCAB - 1, VOCAB - 1, "gelu", VOCAB - 1),
}


def hf_config(eos_token_id, hidden_act):
    tower = dict(hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=LAYERS,
                 num_attention_heads=HEADS, hidden_act=hidden_act)  # fmt: skip
    return transformers.CLIPConfig(
        text_config=dict(vocab_size=VOCAB, max_position_embeddings=CONTEXT, pad_token_id=0,
                         bos_token_id=BOS, eos_token_id=eos_token_id, **tower),
        vision_config=dict(image_size=IMAGE, patch_size=PATCH, **tower),
        projection_dim=EMBED,
    )  # fmt: skip


def token_ids(rng, eot, lengths=(3, 7, 15, 1)):
    """BOS, random words (none equal to the EOT id; above it too when it is 50), the EOT at
    position n, padding (0) after it: as a tokenizer pads to the context length."""
    words = np.setdiff1d(np.arange(1, BOS), [eot])
    tokens = np.zeros((len(lengths), CONTEXT), np.int64)
    for row, n in enumerate(lengths):
        tokens[row, 1:n] = rng.choice(words, size=n - 1)
        tokens[row, 0], tokens[row, n] = BOS, eot
    return tokens


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """Per case: a saved random CLIPModel folder, its state dict, inputs and its outputs."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, IMAGE, IMAGE, 3)).astype(np.float32)  # NHWC, ours
    cases = {}
    for seed, (name, (config_eos, eot, act, _)) in enumerate(CASES.items()):
        torch.manual_seed(seed)
        model = transformers.CLIPModel(hf_config(config_eos, act)).eval()
        with torch.no_grad():  # every array random, LayerNorms and biases too
            for param_name, param in model.named_parameters():
                if "norm" in param_name and param_name.endswith("weight"):
                    param.copy_(1.0 + 0.2 * torch.randn_like(param))
                elif param_name == "logit_scale":
                    param.fill_(math.log(20.0))
                elif param.ndim >= 2:
                    param.copy_(torch.randn_like(param) / math.sqrt(param[0].numel()))
                else:
                    param.copy_(0.3 * torch.randn_like(param))
        tokens = token_ids(rng, eot)
        with torch.no_grad():
            out = model(
                input_ids=torch.from_numpy(tokens),
                pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)),
            )
            padded = model.get_text_features(  # with the padding mask Hugging Face accepts
                input_ids=torch.from_numpy(tokens),
                attention_mask=torch.from_numpy(np.cumsum(tokens == eot, 1) - (tokens == eot) == 0),
            ).pooler_output
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        cases[name] = {
            "folder": folder,
            "state": {k: v.numpy() for k, v in model.state_dict().items()},
            "tokens": tokens,
            "images": images,
            "image_embeddings": out.image_embeds.numpy(),
            "text_embeddings": out.text_embeds.numpy(),
            "logits_per_image": out.logits_per_image.numpy(),
            "padded_text_features": padded.numpy(),
        }
    return cases


def relative_error(ours, reference) -> float:
    return float(np.max(np.abs(np.asarray(ours) - reference)) / np.max(np.abs(reference)))


def ours(model, params, case):
    return jax.jit(model.apply)({"params": params}, case["images"], case["tokens"])


def assert_matches(out, case, tolerance=1e-4):
    for name in ("image_embeddings", "text_embeddings", "logits_per_image"):
        assert relative_error(out[name], case[name]) < tolerance, name


# ---------------------------------------------------------------- golden tests


@pytest.mark.parametrize("name", list(CASES))
def test_hugging_face_folder_gives_hugging_face_s_outputs(hf, name):
    case = hf[name]
    model, params = clip_weights.load_hf_clip(case["folder"])
    assert model.eos_token_id == CASES[name][3]
    assert (model.hidden_act, model.layer_norm_epsilon) == (CASES[name][2], 1e-5)
    assert_matches(ours(model, params, case), case)
    # The padding mask Hugging Face accepts changes nothing at the EOT token (causal).
    unnormalized = jax.jit(lambda p, t: model.apply({"params": p}, t, normalize=False,
                                                    method="encode_text"))  # fmt: skip
    assert relative_error(unnormalized(params, case["tokens"]), case["padded_text_features"]) < 1e-4


def test_pytorch_bin_with_old_position_id_buffers(hf, tmp_path):
    """A pytorch_model.bin (read with weights_only=True) holding the `position_ids` buffers
    that transformers < 4.31 wrote: they are read and dropped."""
    case = hf["first_eos_id"]
    (tmp_path / "config.json").write_text((case["folder"] / "config.json").read_text())
    state = {k: torch.from_numpy(np.array(v)) for k, v in case["state"].items()}
    state["text_model.embeddings.position_ids"] = torch.arange(CONTEXT)[None]
    state["vision_model.embeddings.position_ids"] = torch.arange((IMAGE // PATCH) ** 2 + 1)[None]
    torch.save(state, tmp_path / "pytorch_model.bin")
    model, params = clip_weights.load_hf_clip(tmp_path)
    assert_matches(ours(model, params, case), case)


def test_imported_parameters_are_the_model_s_tree(hf):
    case = hf["first_eos_id"]
    model, params = clip_weights.load_hf_clip(case["folder"])
    fresh = jax.eval_shape(model.init, jax.random.key(0), case["images"], case["tokens"])
    shapes = jax.tree.map(np.shape, params)
    assert shapes == jax.tree.map(lambda x: x.shape, fresh["params"])


def test_init_from_format_reads_the_folder_for_the_clip_model(hf):
    from flax.traverse_util import flatten_dict

    from scenic.train_lib import pretrained_init

    case = hf["first_eos_id"]
    _, params = clip_weights.load_hf_clip(case["folder"])
    expected = flatten_dict(params, sep="/")
    read = clip_weights.read_hf_clip_for_init(case["folder"], {})
    assert sorted(read) == sorted(expected)
    for name, value in read.items():
        np.testing.assert_array_equal(value, np.asarray(expected[name], np.float32))
    # A shorter text tower reads CLIP's first positions.
    shorter = clip_weights.read_hf_clip_for_init(
        case["folder"], {clip_weights.TEXT_POSEMB: (1, 5, WIDTH)}
    )
    np.testing.assert_array_equal(
        shorter[clip_weights.TEXT_POSEMB], read[clip_weights.TEXT_POSEMB][:, :5]
    )
    # Named explicitly, never detected (OWL-ViT's own format reads the same folders).
    assert "hf_clip" in pretrained_init.list_formats()
    assert pretrained_init.detect_format(case["folder"]) != "hf_clip"


# ---------------------------------------------------------------- negative controls


def test_the_comparison_catches_a_missing_ln_pre_the_wrong_gelu_and_pooling(hf):
    case = hf["eos_below_other_ids"]
    model, params = clip_weights.load_hf_clip(case["folder"])
    apply = jax.jit(lambda m, p: m.apply({"params": p}, case["images"], case["tokens"]),
                    static_argnums=0)  # fmt: skip
    no_ln_pre = jax.tree.map(lambda x: x, params)
    no_ln_pre["visual"]["ln_pre"] = {"scale": np.ones(WIDTH), "bias": np.zeros(WIDTH)}
    out = apply(model, no_ln_pre)
    assert relative_error(out["image_embeddings"], case["image_embeddings"]) > 1e-2
    out = apply(model.clone(hidden_act="gelu"), params)
    for name in ("image_embeddings", "text_embeddings"):
        assert relative_error(out[name], case[name]) > 1e-3, name
    out = apply(model.clone(eos_token_id=None), params)  # OpenAI's rule on these tokens
    assert relative_error(out["text_embeddings"], case["text_embeddings"]) > 1e-2
    assert relative_error(out["image_embeddings"], case["image_embeddings"]) < 1e-4


# ---------------------------------------------------------------- configs and errors


def test_defaults_for_configs_that_omit_them_are_transformers():
    text, vision = transformers.CLIPTextConfig(), transformers.CLIPVisionConfig()
    for key, value in clip_weights.TEXT_DEFAULTS.items():
        assert getattr(text, key) == value, key
    for key, value in clip_weights.VISION_DEFAULTS.items():
        assert getattr(vision, key) == value, key
    assert transformers.CLIPConfig().projection_dim == clip_weights.PROJECTION_DIM
    # A config with nothing but its type is OpenAI's ViT-B/32.
    kwargs = clip_weights.clip_kwargs_from_hf_config({"model_type": "clip"})
    assert {k: kwargs[k] for k in clip.VARIANTS["vit_b32"]} == clip.VARIANTS["vit_b32"]


def test_every_tensor_that_does_not_fit_is_named_in_one_error(hf, tmp_path):
    from safetensors.numpy import save_file

    case = hf["first_eos_id"]
    state = dict(case["state"])
    del state["vision_model.pre_layrnorm.bias"], state["text_model.encoder.layers.1.mlp.fc2.weight"]
    state["text_projection.weight"] = state["text_projection.weight"][:, :-1]
    state["vision_model.head.weight"] = np.zeros((3, WIDTH), np.float32)
    (tmp_path / "config.json").write_text((case["folder"] / "config.json").read_text())
    save_file({k: np.array(v, order="C") for k, v in state.items()}, tmp_path / "model.safetensors")
    with pytest.raises(PretrainedInitError) as info:
        clip_weights.load_hf_clip(tmp_path)
    message = str(info.value)
    assert "read as Hugging Face CLIPModel: 4 problems:" in message
    assert f"vision_model.pre_layrnorm.bias: missing (expected ({WIDTH},))" in message
    assert f"layers.1.mlp.fc2.weight: missing (expected ({WIDTH}, {MLP}))" in message
    assert f"text_projection.weight: ({EMBED}, {WIDTH - 1}), expected ({EMBED}, {WIDTH})" in message
    assert "vision_model.head.weight: not part of a CLIPModel" in message


def test_configs_it_cannot_build(hf, tmp_path):
    config = json.loads((hf["first_eos_id"]["folder"] / "config.json").read_text())
    with pytest.raises(PretrainedInitError, match="model_type 'owlvit', not 'clip'"):
        clip_weights.clip_kwargs_from_hf_config({**config, "model_type": "owlvit"})
    mixed = {**config, "vision_config": {**config["vision_config"], "hidden_act": "gelu"}}
    with pytest.raises(PretrainedInitError, match="differ in hidden_act"):
        clip_weights.clip_kwargs_from_hf_config(mixed)
    with pytest.raises(PretrainedInitError, match="holds no config.json"):
        clip_weights.load_hf_clip(tmp_path)


# ---------------------------------------------------------------- OpenAI / OpenCLIP layout

#: OpenCLIP CLIPs with every tensor random: a ViT and a ResNet image tower, text heads of
#: 64 channels (OpenAI's rule, which the reader applies).
OPENAI_TOWERS = {
    "vit": dict(layers=2, width=128, patch_size=8, image_size=32),
    "resnet": dict(layers=(1, 2, 1, 1), width=8, image_size=64),
}


@pytest.fixture(scope="module")
def openai_files(open_clip_reference, randomize_weights, tmp_path_factory):
    """name -> (OpenCLIP model in eval mode, its open_clip_model.safetensors, images,
    tokens)."""
    import safetensors.torch

    out = {}
    for seed, (name, tower) in enumerate(OPENAI_TOWERS.items()):
        torch.manual_seed(seed)
        model = open_clip_reference.CLIP(
            embed_dim=32,
            vision_cfg=open_clip_reference.CLIPVisionCfg(**tower),
            text_cfg=open_clip_reference.CLIPTextCfg(
                context_length=12, vocab_size=60, width=64, heads=1, layers=2
            ),
            quick_gelu=True,
        )
        randomize_weights(model, std=0.05, vector_std=0.3)
        with torch.no_grad():
            model.logit_scale.fill_(math.log(30.0))
        folder = tmp_path_factory.mktemp(f"openai_{name}")
        path = folder / "open_clip_model.safetensors"
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(state, str(path))
        rng = np.random.default_rng(seed)
        size = tower["image_size"]
        images = rng.normal(size=(3, size, size, 3)).astype(np.float32)
        tokens = np.zeros((4, 12), np.int64)
        for row, length in enumerate([3, 12, 7, 1]):
            tokens[row, : length - 1] = rng.integers(1, 58, length - 1)
            tokens[row, length - 1] = 59  # the EOT: the highest id, where OpenCLIP pools
        out[name] = (model.eval(), path, images, tokens)
    return out


def open_clip_outputs(model, images, tokens):
    with torch.no_grad():
        image, text, scale = model(
            torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), torch.from_numpy(tokens)
        )
    return image.numpy(), text.numpy(), (scale * image @ text.T).numpy()


@pytest.mark.parametrize("name", sorted(OPENAI_TOWERS))
def test_openai_layout_gives_open_clip_s_outputs(openai_files, name):
    model, path, images, tokens = openai_files[name]
    net, variables = clip_weights.load_openai_clip(path)
    assert net.vision_is_resnet() == (name == "resnet")
    assert (net.text_heads, net.context_length, net.vocab_size) == (1, 12, 60)
    out = jax.jit(net.apply)(variables, images, tokens.astype(np.int32))
    image, text, logits = open_clip_outputs(model, images, tokens)
    np.testing.assert_allclose(out["image_embeddings"], image, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["text_embeddings"], text, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["logits_per_image"], logits, rtol=1e-4, atol=1e-4)
    # Negative control: the exact GELU instead of OpenAI's QuickGELU changes the text.
    gelu, _ = clip_weights.load_openai_clip(path, hidden_act="gelu")
    other = jax.jit(gelu.apply)(variables, images, tokens.astype(np.int32))
    assert np.abs(np.asarray(other["text_embeddings"]) - text).max() > 1e-3


def test_openai_layout_bin_torchscript_and_stray_tensors(openai_files, tmp_path):
    model, path, _, _ = openai_files["vit"]
    state = model.state_dict()
    torch.save(dict(state), tmp_path / "open_clip_pytorch_model.bin")
    _, from_bin = clip_weights.load_openai_clip(tmp_path / "open_clip_pytorch_model.bin")
    _, from_safetensors = clip_weights.load_openai_clip(path)
    jax.tree.map(np.testing.assert_array_equal, from_bin, from_safetensors)
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    scripted.save(str(tmp_path / "ViT-B-32.pt"))
    with pytest.raises(PretrainedInitError, match="TorchScript archive"):
        clip_weights.read_openai_state_dict(tmp_path / "ViT-B-32.pt")
    stray = {k: v.numpy() for k, v in state.items()}
    stray["visual.head.weight"] = stray["visual.proj"]
    with pytest.raises(PretrainedInitError, match=r"1 tensors of no CLIP part: visual.head"):
        clip_weights.params_from_openai_clip(
            stray, clip_weights.clip_kwargs_from_openai_state(stray)
        )


def test_init_from_reads_openai_layout_with_batch_statistics(openai_files):
    """Detected by OpenCLIP's file name; parameters, and the ResNet tower's batch statistics
    through the core's model-state hook."""
    import ml_collections
    from flax.traverse_util import flatten_dict

    from scenic.train_lib import pretrained_init

    _, path, _, _ = openai_files["resnet"]
    assert pretrained_init.detect_format(path) == "openai_clip"
    _, variables = clip_weights.load_openai_clip(path)
    read, described = pretrained_init.read_pretrained(path)
    assert "OpenAI-layout" in described
    expected = flatten_dict(variables["params"], sep="/")
    assert sorted(read) == sorted(expected)
    fresh = jax.tree.map(np.zeros_like, {"batch_stats": variables["batch_stats"]})
    config = ml_collections.ConfigDict({"checkpoint": str(path)})
    state, loaded = pretrained_init.model_state_from_config(fresh, config)
    assert len(loaded) == len(jax.tree.leaves(fresh)) > 0
    jax.tree.map(np.testing.assert_array_equal, state["batch_stats"], variables["batch_stats"])


def test_the_cli_knows_the_clip_formats():
    """The formats register when the CLI loads its models (a fresh process: in this one the
    tests have imported clip_weights already)."""
    import subprocess
    import sys

    code = (
        "import scenic_baselines.models\n"
        "from scenic.train_lib import pretrained_init\n"
        "print(' '.join(pretrained_init.list_formats()))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"hf_clip", "openai_clip"} <= set(done.stdout.split())
