"""The published configs and the `init_from` formats they start from.

Configs: every shipped config resolves through the CLI's config checking, the published
ones with the command their docstring opens with (its placeholder paths pointed at small
files written here) and with the original recipes' values; the full-size models are
traced with `jax.eval_shape` only (nothing compiled or allocated) for their parameter
counts, and the text tower's learning-rate pattern matches exactly the text tower.

Formats (`scenic_owl_vit.init_formats`): a tiny Hugging Face CLIPModel folder and Owlv2
detection folder (random weights, `save_pretrained`) and a tiny original Scenic msgpack
checkpoint (written by `test_original_weights.original_tree`, the original's module names)
load through the core's `pretrained_init` into a tiny `OwlViTDetectionModel` with equal
arrays; the CLIP import also computes Hugging Face's text features; `detect` tells the
formats (and files of no format) apart without raising.
"""

import importlib
import importlib.util
import json
import math
import pathlib
import re
import shlex

import flax.serialization
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scenic.common_lib import config_utils, runner
from scenic.common_lib.config_utils import ConfigError
from scenic.train_lib import optimizers, pretrained_init
from scenic.train_lib.pretrained_init import PretrainedInitError
from scenic_baselines import clip_tokenizer, clip_weights
from scenic_owl_vit import detection_model, init_formats, weights
from scenic_owl_vit import model as owl_model
from scenic_owl_vit.configs import owl_vit_b32_lvis
from scenic_owl_vit.models import MODELS

PACKAGE = "scenic_owl_vit.configs"
CONFIGS = config_utils.list_configs(PACKAGE)
#: Published config -> (variant, steps, image-tower lr, parameter count of the model).
PUBLISHED = {
    "owl_vit_b32_lvis": ("owl_vit_b32", 140_000, 5e-5, 153_231_879),
    "owl_vit_b16_lvis": ("owl_vit_b16", 140_000, 5e-5, 152_789_511),
    "owl_vit_l14_lvis": ("owl_vit_l14", 70_000, 2e-5, 433_888_519),
    "owlv2_b16_finetune": ("owlv2_b16", 16_000, 5e-5, 154_966_792),
}
PLACEHOLDERS = ("init_from.checkpoint", "tokenizer_path")
#: Every tiny model here: the original test's widths (all different), a vocabulary that
#: holds the byte tokenizer's 259 ids, and embed_dim = text_width (Hugging Face's OWL-ViT
#: needs it).
TINY = dict(
    embed_dim=24, image_size=32, patch_size=8, vision_width=32, vision_layers=2,
    vision_heads=2, vision_mlp_dim=64, vocab_size=300, context_length=16, text_width=24,
    text_layers=2, text_heads=3, text_mlp_dim=48,
)  # fmt: skip
EOT = TINY["vocab_size"] - 1
HF_CONTEXT = 20  # the Hugging Face CLIP's text positions; OWL-ViT keeps the first 16


def load(name):
    return config_utils.load_config(name, PACKAGE)


def docstring_command(name) -> list[str]:
    """The command the config's docstring opens with (backslash-continued lines), as argv."""
    lines = importlib.import_module(f"{PACKAGE}.{name}").__doc__.splitlines()
    command = lines[0]
    for line in lines[1:]:
        if not command.endswith("\\"):
            break
        command = command[:-1] + " " + line.strip()
    return shlex.split(command)


# ---------------------------------------------------------------- files written here


def original_test_helpers():
    """tests/test_original_weights.py as a module (its writer of the original's names)."""
    path = pathlib.Path(__file__).with_name("test_original_weights.py")
    spec = importlib.util.spec_from_file_location("owl_vit_original_weights_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_vocabulary(folder: pathlib.Path) -> pathlib.Path:
    """A CLIP BPE vocabulary without merges (vocab.json + merges.txt): every text is byte
    tokens, ids in OpenAI's order (bytes, bytes + '</w>', start, end)."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(clip_tokenizer.bytes_to_unicode().values())
    vocab = [*symbols, *(s + "</w>" for s in symbols), clip_tokenizer.START_TOKEN,
             clip_tokenizer.END_TOKEN]  # fmt: skip
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def randomize(model, torch, seed):
    """Every parameter of a torch model random (LayerNorms and biases too)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 0:
                param.fill_(math.log(10.0))
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif param.ndim >= 2:
                param.copy_(torch.randn_like(param) / math.sqrt(param[0].numel()))
            else:
                param.copy_(0.3 * torch.randn_like(param))
    return model.eval()


def hf_towers():
    tower = dict(hidden_size=TINY["vision_width"], intermediate_size=TINY["vision_mlp_dim"],
                 num_hidden_layers=TINY["vision_layers"], num_attention_heads=TINY["vision_heads"],
                 image_size=TINY["image_size"], patch_size=TINY["patch_size"])  # fmt: skip
    text = dict(vocab_size=TINY["vocab_size"], hidden_size=TINY["text_width"],
                intermediate_size=TINY["text_mlp_dim"], num_hidden_layers=TINY["text_layers"],
                num_attention_heads=TINY["text_heads"], bos_token_id=EOT - 1,
                eos_token_id=EOT, pad_token_id=0)  # fmt: skip
    return text, tower


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The files of every format: the original checkpoint needs no torch; the Hugging Face
    folders are None without torch and transformers."""
    root = tmp_path_factory.mktemp("weights")
    out = {"vocabulary": write_vocabulary(root / "vocabulary")}
    helpers = original_test_helpers()
    source = owl_model.OWLViT(**TINY, objectness=True, **owl_model.ORIGINAL_CONVENTIONS)
    params = helpers.random_params(source, seed=3)
    tree = helpers.wrapped(helpers.original_tree(params, "v2", objectness=True), "params")
    out["original"] = helpers.write(root / "owl2-tiny_0000000", tree)
    out["original_params"] = params
    (root / "clip_config_only").mkdir()
    (root / "clip_config_only" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    out["clip_config_only"] = root / "clip_config_only"
    try:
        import torch
        import transformers
    except ImportError:
        return {**out, "hf_clip": None, "hf_owlv2": None}
    text, vision = hf_towers()
    clip_config = transformers.CLIPConfig(
        text_config={**text, "max_position_embeddings": HF_CONTEXT}, vision_config=vision,
        projection_dim=TINY["embed_dim"],
    )  # fmt: skip
    hf_clip = randomize(transformers.CLIPModel(clip_config), torch, seed=1)
    hf_clip.save_pretrained(root / "hf_clip")
    owl_config = transformers.Owlv2Config(
        text_config={**text, "max_position_embeddings": TINY["context_length"]},
        vision_config=vision, projection_dim=TINY["text_width"],
    )  # fmt: skip
    randomize(transformers.Owlv2ForObjectDetection(owl_config), torch, seed=2).save_pretrained(
        root / "hf_owlv2"
    )
    return {**out, "hf_clip": root / "hf_clip", "hf_owlv2": root / "hf_owlv2",
            "hf_clip_model": hf_clip, "torch": torch}  # fmt: skip


def needs_hf(files, key):
    if files[key] is None:
        pytest.skip("torch and transformers are not installed")
    return files[key]


def tiny_detection_model(**model):
    config = ml_collections.ConfigDict(
        {"model": {**TINY, **model}, "tokenizer": "bytes", "prompt_templates": ("{}",)}
    )
    meta = {"num_classes": 2, "class_names": ["cat", "dog"],
            "input_shape": {"image": (-1, 32, 32, 3)}}  # fmt: skip
    return detection_model.OwlViTDetectionModel(config, meta)


def fresh_params(model):
    """The model's parameters as zeros (shapes from `eval_shape`: nothing compiled)."""
    inputs = {"image": jnp.zeros((1, 32, 32, 3)), "text_tokens": jnp.zeros((2, 16), jnp.int32)}
    shapes = jax.eval_shape(model.flax_model.init, jax.random.key(0), inputs)["params"]
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def flat(tree):
    return flax.traverse_util.flatten_dict(tree, sep="/")


def resolved(name, files, overrides=()):
    """The config resolved with its placeholders pointed at the files written here."""
    config = load(name)
    with config.unlocked():
        config.tokenizer_path = str(files["vocabulary"])
        v2 = name.startswith("owlv2")
        config.init_from.checkpoint = str(files["original" if v2 else "clip_config_only"])
    return runner.resolve_config(config, MODELS, overrides)


# ---------------------------------------------------------------- configs


def test_shipped_configs():
    assert set(CONFIGS) == {"owl_vit_digits", *PUBLISHED}


@pytest.mark.parametrize("name", CONFIGS)
def test_config_resolves(name, files):
    config, model_cls = resolved(name, files) if name in PUBLISHED else runner.resolve_config(
        load(name), MODELS
    )  # fmt: skip
    assert model_cls is MODELS[config.model_name]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_docstring_command_sets_every_placeholder(name, files):
    """The docstring opens with the command; its overrides are the placeholders, which the
    config leaves unusable (a run without them stops with a ConfigError)."""
    argv = docstring_command(name)
    assert argv[:6] == ["scenic-owl-vit", "train", "--config", name, "--workdir", f"/tmp/{name}"]
    overrides = runner.parse_overrides(argv[6:])
    assert set(PLACEHOLDERS) <= {item.partition("=")[0] for item in overrides}
    local = {"tokenizer_path": files["vocabulary"],
             "init_from.checkpoint": files["original" if name.startswith("owlv2") else
                                           "clip_config_only"]}  # fmt: skip
    overrides = [f"{key}={local.get(key, value)}" for key, _, value in
                 (item.partition("=") for item in overrides)]  # fmt: skip
    config, model_cls = runner.resolve_config(load(name), MODELS, overrides)
    assert config.tokenizer_path == str(files["vocabulary"])

    raw = load(name)
    assert raw.tokenizer_path is None and raw.init_from.checkpoint.startswith("/path/to/")
    with pytest.raises(ConfigError, match="init_from.checkpoint .* does not exist"):
        runner.resolve_config(load(name), MODELS)
    with pytest.raises(ConfigError, match="tokenizer_path"):
        model_cls(raw, {"num_classes": 1203})
    doc = importlib.import_module(f"{PACKAGE}.{name}").__doc__
    assert "NOT RUN HERE" in doc and "LVIS AP" in doc and "APr" in doc
    assert f"{PUBLISHED[name][3]:,}" in doc


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_recipe(name, files):
    variant, steps, image_lr, _ = PUBLISHED[name]
    config, _ = resolved(name, files)
    assert config.model.variant == variant and config.tokenizer == "clip"
    assert config.dataset_name == "coco" and config.dataset_configs.tfds_name == "lvis"
    assert config.dataset_configs.image_size == owl_model.VARIANTS[variant]["image_size"]
    # Rare classes held out of training (zero-shot APr); 50 negatives per image.
    assert config.dataset_configs.exclude_train_labels == "lvis_rare"
    assert config.dataset_configs.random_negatives == 50
    assert config.dataset_configs.mosaic_sizes == (1, 2, 3)
    assert config.dataset_configs.mosaic_weights == (0.4, 0.3, 0.3)
    assert (config.batch_size, config.num_training_steps) == (256, steps)
    assert config.optimizer.name == "adam" and (config.optimizer.b1, config.optimizer.b2) == (
        0.9, 0.999)  # fmt: skip
    assert config.optimizer.grad_clip_norm == 1.0
    ((pattern, factor),) = config.optimizer.lr_multipliers
    assert pattern == owl_vit_b32_lvis.TEXT_TOWER and factor * image_lr == pytest.approx(2e-6)
    assert config.lr_configs.base_learning_rate == image_lr
    assert config.lr_configs.factors == "constant * linear_warmup * cosine_decay"
    assert config.lr_configs.warmup_steps == 1000
    assert config.matcher == "hungarian_cover_tpu_matcher" and config.federated_loss
    assert (config.focal_alpha, config.focal_gamma) == (0.3, 2.0)
    assert (config.class_loss_coef, config.bbox_loss_coef, config.giou_loss_coef) == (1, 1, 1)
    assert config.eval_top_k == 300
    templates = config.prompt_templates
    assert len(templates) == 81 and templates[0] == "{}" and len(set(templates)) == 81
    assert all(t.count("{}") == 1 for t in templates)
    eval_templates = config_utils.load_config(f"{name}:eval", PACKAGE).prompt_templates
    assert eval_templates == owl_vit_b32_lvis.EVAL_PROMPT_TEMPLATES and len(eval_templates) == 7
    if name.startswith("owlv2"):  # a released detector: every parameter from it
        assert not config.init_from.get("reinit") and not config.init_from.get("format")
    else:
        assert config.init_from.format == "hf_clip_for_owl_vit"
        assert tuple(config.init_from.reinit) == init_formats.HEAD_PATTERNS
        prior = 1 / (1 + math.exp(-config.model.logit_shift_bias_init))
        assert prior == pytest.approx(0.01)


@pytest.fixture(scope="module")
def full_size(files):
    """Published config -> {'/'-joined name: ShapeDtypeStruct} of its full-size model."""
    out = {}
    for name in PUBLISHED:
        config, model_cls = resolved(name, files)
        model = model_cls(config, {"num_classes": 1203})
        size = config.dataset_configs.image_size
        inputs = {"image": jnp.zeros((1, size, size, 3)),
                  "text_tokens": jnp.zeros((2, 16), jnp.int32)}  # fmt: skip
        shapes = jax.eval_shape(model.flax_model.init, jax.random.key(0), inputs)["params"]
        out[name] = (config, shapes)
    return out


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_full_size_parameter_count(name, full_size):
    _, shapes = full_size[name]
    count = sum(math.prod(s.shape) for s in jax.tree.leaves(shapes))
    assert count == PUBLISHED[name][3]
    if name == "owl_vit_b32_lvis":  # ~150M with the text tower, as the paper's B/32
        assert 1.4e8 < count < 1.6e8
        text = sum(math.prod(s.shape) for n, s in flat(shapes).items()
                   if n.startswith("clip/text/"))  # fmt: skip
        assert 6e7 < text < 7e7


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_lr_multiplier_matches_exactly_the_text_tower(name, full_size):
    config, shapes = full_size[name]
    paths = [optimizers.param_path(path) for path, _ in
             jax.tree_util.tree_flatten_with_path(shapes)[0]]  # fmt: skip
    ((pattern, _),) = config.optimizer.lr_multipliers
    matched = {p for p in paths if re.fullmatch(pattern, p)}
    text = {p for p in paths if p.startswith("clip/text/")}
    assert matched == text and len(text) == 12 * 16 + 5  # 12 blocks, embeddings, norm, proj
    tx = optimizers.get_optimizer(config.optimizer, 1.0)
    jax.eval_shape(tx.init, shapes)  # the optimizer's own check: the pattern matches


def test_lr_multiplier_scales_the_text_tower_updates(files):
    """Adam's first update is ~lr * sign(g) for every parameter; the config's optimizer
    makes it 0.04 of that for the text tower, 1 elsewhere."""
    config, _ = resolved("owl_vit_b32_lvis", files)
    zeros = np.zeros(3, np.float32)  # the model's names (only the paths matter)
    params = {"clip": {"text": {"projection": {"kernel": zeros}}, "logit_scale": zeros,
                       "visual": {"projection": {"kernel": zeros}}},
              "class_head": {"dense0": {"bias": zeros}}}  # fmt: skip
    tx = optimizers.get_optimizer(config.optimizer, 1.0)
    grads = jax.tree.map(np.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    for name, update in flat(updates).items():
        expected = -0.04 if name.startswith("clip/text/") else -1.0
        np.testing.assert_allclose(update, expected, rtol=1e-4, err_msg=name)


# ---------------------------------------------------------------- init formats


def test_hf_clip_round_trip(files):
    folder = needs_hf(files, "hf_clip")
    model = tiny_detection_model()
    init_from = ml_collections.ConfigDict(
        {"checkpoint": str(folder), "reinit": init_formats.HEAD_PATTERNS}
    )
    params, summary = pretrained_init.from_config(fresh_params(model), init_from)

    _, reference = clip_weights.load_hf_clip(folder)  # the CLIP tower's own import
    expected = {f"clip/{name}": value for name, value in flat(reference).items()}
    expected["clip/text/posembed_input/pos_embedding"] = expected[
        "clip/text/posembed_input/pos_embedding"][:, :TINY["context_length"]]  # fmt: skip
    loaded = flat(params)
    assert set(summary.loaded) == set(expected) and not summary.missing and not summary.unused
    assert {n.split("/")[0] for n in summary.reinitialised} == {
        "merged_norm", "class_head", "box_head"}  # fmt: skip
    for name, value in expected.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)

    # The text tower computes Hugging Face's text features (16 of its 20 positions used).
    torch, hf = files["torch"], files["hf_clip_model"]
    tokens = np.zeros((3, TINY["context_length"]), np.int64)
    for row, length in enumerate((3, 9, 15)):
        tokens[row, :length] = np.random.default_rng(row).integers(1, EOT - 1, length)
        tokens[row, length] = EOT
    with torch.no_grad():
        theirs = hf.get_text_features(input_ids=torch.from_numpy(tokens))
    theirs = getattr(theirs, "pooler_output", theirs).numpy()
    embed = jax.jit(lambda p, t: model.flax_model.apply(
        {"params": p}, t, method=owl_model.OWLViT.text_embeddings))  # fmt: skip
    ours = embed(params, jnp.asarray(tokens, jnp.int32))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_original_round_trip(files):
    model = tiny_detection_model(objectness=True)
    init_from = ml_collections.ConfigDict({"checkpoint": str(files["original"])})  # detected
    params, summary = pretrained_init.from_config(fresh_params(model), init_from)
    source, loaded = flat(files["original_params"]), flat(params)
    assert set(summary.loaded) == set(loaded) == set(source)
    assert not summary.missing and not summary.reinitialised and not summary.unused
    for name, value in loaded.items():
        if name == "clip/visual/projection/kernel":  # the original's image tower has none
            assert not value.any()
        else:
            np.testing.assert_array_equal(value, source[name], err_msg=name)


def test_hf_owl_vit_round_trip(files):
    folder = needs_hf(files, "hf_owlv2")
    model = tiny_detection_model(objectness=True)
    init_from = ml_collections.ConfigDict({"checkpoint": str(folder)})  # detected
    params, summary = pretrained_init.from_config(fresh_params(model), init_from)
    _, reference = weights.load_hf_owl_vit(folder)
    expected, loaded = flat(reference), flat(params)
    assert set(summary.loaded) == set(loaded) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)


def test_another_clip_than_the_model_is_one_clear_error(files):
    folder = needs_hf(files, "hf_clip")
    model = tiny_detection_model(patch_size=16)
    init_from = ml_collections.ConfigDict(
        {"checkpoint": str(folder), "reinit": init_formats.HEAD_PATTERNS}
    )
    with pytest.raises(PretrainedInitError, match="patch_size 8 \\(model: 16\\).*model.variant"):
        pretrained_init.from_config(fresh_params(model), init_from)


def test_detect_tells_the_formats_apart(files, tmp_path):
    """Each file is claimed by exactly its own format (among every registered one); files
    of no format are claimed by none, and no `detect` raises."""
    cases = {
        files["original"]: "owl_vit_original",
        files["clip_config_only"]: "hf_clip_for_owl_vit",
    }
    if files["hf_clip"] is not None:
        cases.update({files["hf_clip"]: "hf_clip_for_owl_vit", files["hf_owlv2"]: "hf_owl_vit"})
    for model_type, expected in (("owlvit", "hf_owl_vit"), ("vit", None), ("bert", None)):
        (tmp_path / model_type).mkdir()
        (tmp_path / model_type / "config.json").write_text(json.dumps({"model_type": model_type}))
        cases[tmp_path / model_type] = expected
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "config.json").write_text("[1, 2]")
    vit = {"params": {"Transformer": {"encoder_norm": {"scale": np.ones(3, np.float32)}}}}
    (tmp_path / "vit.msgpack").write_bytes(flax.serialization.msgpack_serialize(vit))
    (tmp_path / "random.bin").write_bytes(b"\x81\xa8backbone but not a checkpoint")
    (tmp_path / "empty").mkdir()
    for path in ("broken", "list", "vit.msgpack", "random.bin", "empty", "missing"):
        cases[tmp_path / path] = None

    owl_formats = set(init_formats.INIT_FROM_FORMATS)
    for path, expected in cases.items():
        claimed = {name for name in owl_formats
                   if init_formats.INIT_FROM_FORMATS[name].detect(path)}  # fmt: skip
        assert claimed == ({expected} if expected else set()), path
        if expected:
            assert pretrained_init.detect_format(path) == expected

    # An original checkpoint saved as checkpoint_<step> is also the ViT 'scenic_flax'
    # format's: the error asks for init_from.format, which then reads it.
    folder = tmp_path / "workdir"
    folder.mkdir()
    (folder / "checkpoint_7").write_bytes(files["original"].read_bytes())
    with pytest.raises(PretrainedInitError, match="owl_vit_original.*init_from.format"):
        pretrained_init.detect_format(folder)
    arrays, described = pretrained_init.read_pretrained(folder, "owl_vit_original")
    assert "original Scenic OWL-ViT" in described and "merged_norm/scale" in arrays


def test_a_file_that_does_not_fit_names_the_format(files, tmp_path):
    folder = tmp_path / "clip_without_weights"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(PretrainedInitError, match="read as Hugging Face CLIPModel folder"):
        pretrained_init.read_pretrained(folder, None, {})
