"""OWL-ViT and OWLv2 from Hugging Face detection folders: golden tests against transformers'
own OwlViTForObjectDetection and Owlv2ForObjectDetection (every array random, saved with
`save_pretrained`): text-query logits (a padded query among them), boxes, OWLv2's
objectness, and image-guided (one-shot) detection; negative controls that the comparison
catches the original's conventions (merged-token LayerNorm epsilon 1e-6, tanh GELU, -1e6
for padded queries) where Hugging Face's apply; one error naming every tensor that does
not fit."""

import math

import jax
import numpy as np
import pytest

from scenic.train_lib.pretrained_init import PretrainedInitError
from scenic_owl_vit import model as owl_model
from scenic_owl_vit import weights

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

WIDTH, LAYERS, HEADS, MLP = 32, 2, 4, 64
IMAGE, PATCH, VOCAB, CONTEXT = 32, 8, 100, 16
BOS, EOT = VOCAB - 2, VOCAB - 1
BATCH, QUERIES = 2, 3
KINDS = {"owlvit": "OwlViT", "owlv2": "Owlv2"}
#: name -> (kind, factor on the vision tower's post_layernorm): at 0.01 the merged tokens'
#: variance (~1e-8) is far below the LayerNorm epsilon, so that the epsilon shows.
CASES = {"owlvit": ("owlvit", 1.0), "owlv2": ("owlv2", 1.0), "owlv2_small_tokens": ("owlv2", 0.01)}


def hf_model(kind, seed, post_norm_factor=1.0):
    prefix = KINDS[kind]
    tower = dict(hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=LAYERS,
                 num_attention_heads=HEADS)  # fmt: skip
    config = getattr(transformers, f"{prefix}Config")(
        text_config=dict(vocab_size=VOCAB, max_position_embeddings=CONTEXT, pad_token_id=0,
                         bos_token_id=BOS, eos_token_id=EOT, **tower),
        vision_config=dict(image_size=IMAGE, patch_size=PATCH, **tower),
        projection_dim=WIDTH,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = getattr(transformers, f"{prefix}ForObjectDetection")(config).eval()
    with torch.no_grad():  # every array random, LayerNorms and biases too
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif name.endswith("logit_scale") and param.ndim == 0:
                param.fill_(math.log(20.0))
            elif param.ndim >= 2:
                param.copy_(torch.randn_like(param) / math.sqrt(param[0].numel()))
            else:
                param.copy_(0.3 * torch.randn_like(param))
            if "vision_model.post_layernorm" in name:
                param.mul_(post_norm_factor)
    return model


def token_ids(rng, lengths=(3, 7, 15, 1, 5, 0)):
    """[BATCH * QUERIES, CONTEXT]: BOS, random words, the EOT (the highest id), zeros after;
    length 0: a padded query (all zeros), as Hugging Face's processor pads query lists."""
    tokens = np.zeros((len(lengths), CONTEXT), np.int64)
    for row, n in enumerate(lengths):
        if n:
            tokens[row, 1:n] = rng.integers(1, BOS, size=n - 1)
            tokens[row, 0], tokens[row, n] = BOS, EOT
    return tokens


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """Per kind: a saved random detection model's folder, inputs and its outputs."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(BATCH, IMAGE, IMAGE, 3)).astype(np.float32)  # NHWC, ours
    query_images = rng.normal(size=(BATCH, IMAGE, IMAGE, 3)).astype(np.float32)
    tokens = token_ids(rng)
    cases = {}
    for seed, (name, (kind, factor)) in enumerate(CASES.items()):
        model = hf_model(kind, seed, factor)
        pixels = torch.from_numpy(images.transpose(0, 3, 1, 2))
        with torch.no_grad():
            out = model(input_ids=torch.from_numpy(tokens), pixel_values=pixels,
                        attention_mask=torch.from_numpy((tokens > 0).astype(np.int64)))  # fmt: skip
            guided = model.image_guided_detection(
                pixel_values=pixels,
                query_pixel_values=torch.from_numpy(query_images.transpose(0, 3, 1, 2)),
            )
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        cases[name] = {
            "folder": folder,
            "state": {k: v.numpy() for k, v in model.state_dict().items()},
            "images": images,
            "query_images": query_images,
            "tokens": tokens.reshape(BATCH, QUERIES, CONTEXT),
            "pred_logits": out.logits.numpy(),
            "pred_boxes": out.pred_boxes.numpy(),
            "class_embeddings": out.class_embeds.numpy(),
            "objectness_logits": getattr(out, "objectness_logits", None),
            "guided_logits": guided.logits.numpy(),
            "guided_boxes": guided.target_pred_boxes.numpy(),
            "query_boxes": guided.query_pred_boxes.numpy(),
        }
    return cases


def relative_error(ours, reference) -> float:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


def apply(model, params, case):
    return jax.jit(model.apply)({"params": params}, case["images"], case["tokens"])


def logit_error(ours, case):
    """The relative error over real queries; padded ones must be float32's minimum in both."""
    real = case["tokens"][..., 0] > 0  # [B, Q]
    mask = np.broadcast_to(real[:, None, :], case["pred_logits"].shape)
    assert np.all(case["pred_logits"][~mask] == np.finfo(np.float32).min)
    assert np.all(np.asarray(ours)[~mask] == np.finfo(np.float32).min)
    return relative_error(np.asarray(ours)[mask], case["pred_logits"][mask])


# ---------------------------------------------------------------- golden tests


@pytest.mark.parametrize("name", list(CASES))
def test_hugging_face_folder_gives_hugging_face_s_detections(hf, name):
    case, kind = hf[name], CASES[name][0]
    model, params = weights.load_hf_owl_vit(case["folder"])
    assert model.objectness == (kind == "owlv2")
    assert (model.merged_norm_epsilon, model.gelu_approximate) == (1e-5, False)
    out = apply(model, params, case)
    assert out["pred_logits"].shape == (BATCH, (IMAGE // PATCH) ** 2, QUERIES)
    assert logit_error(out["pred_logits"], case) < 1e-4
    for name in ("pred_boxes", "class_embeddings"):
        assert relative_error(out[name], case[name]) < 1e-4, name
    if kind == "owlv2":
        assert relative_error(out["objectness_logits"], case["objectness_logits"]) < 1e-4
    else:
        assert "objectness_logits" not in out


@pytest.mark.parametrize("name", ["owlvit", "owlv2"])
def test_image_guided_detection_is_hugging_face_s(hf, name):
    case = hf[name]
    model, params = weights.load_hf_owl_vit(case["folder"])
    guided = jax.jit(lambda p, x, q: model.apply({"params": p}, x, q,
                                                 method="image_guided_detection"))  # fmt: skip
    out = guided(params, case["images"], case["query_images"])
    assert out["pred_logits"].shape == (BATCH, (IMAGE // PATCH) ** 2, 1)
    assert relative_error(out["pred_logits"], case["guided_logits"]) < 1e-4
    assert relative_error(out["pred_boxes"], case["guided_boxes"]) < 1e-4
    assert relative_error(out["query_boxes"], case["query_boxes"]) < 1e-4


def test_pytorch_bin_folder(hf, tmp_path):
    """A pytorch_model.bin (read with weights_only=True), as older transformers wrote it."""
    case = hf["owlvit"]
    (tmp_path / "config.json").write_text((case["folder"] / "config.json").read_text())
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in case["state"].items()},
               tmp_path / "pytorch_model.bin")  # fmt: skip
    model, params = weights.load_hf_owl_vit(tmp_path)
    assert relative_error(apply(model, params, case)["pred_boxes"], case["pred_boxes"]) < 1e-4


def test_imported_parameters_are_the_model_s_tree(hf):
    case = hf["owlv2"]
    model, params = weights.load_hf_owl_vit(case["folder"])
    fresh = jax.eval_shape(model.init, jax.random.key(0), case["images"], case["tokens"])
    assert jax.tree.map(np.shape, params) == jax.tree.map(lambda x: x.shape, fresh["params"])


def test_variants_build_at_their_sizes():
    for name, size in [("owl_vit_b32", 768), ("owl_vit_l14", 840), ("owlv2_b16", 960)]:
        model = owl_model.owl_vit(name)
        assert model.image_size == size and model.merged_norm_epsilon == 1e-6
        assert model.gelu_approximate and model.padded_query_logit == -1e6
    assert owl_model.owl_vit("owlv2_l14").grid_size == 1008 // 14


# ---------------------------------------------------------------- negative controls


def test_the_comparison_catches_the_original_s_conventions(hf):
    """The original's merged-token LayerNorm epsilon (1e-6), its tanh GELU and its -1e6 for
    padded queries, each alone, on Hugging Face's weights: told apart at the golden tests'
    tolerance (the golden errors here are ~1e-6)."""
    case = hf["owlv2_small_tokens"]
    model, params = weights.load_hf_owl_vit(case["folder"])
    out = apply(model.clone(merged_norm_epsilon=1e-6), params, case)
    for name in ("pred_boxes", "objectness_logits"):
        assert relative_error(out[name], case[name]) > 1e-2, name
    # The GELU kinds differ by < 1e-3 where it is largest: ~3e-4 here in the objectness
    # logits, ~7e-5 in the boxes (after the sigmoid, below the tolerance).
    case = hf["owlv2"]
    model, params = weights.load_hf_owl_vit(case["folder"])
    out = apply(model.clone(gelu_approximate=True), params, case)
    assert relative_error(out["objectness_logits"], case["objectness_logits"]) > 1e-4
    assert relative_error(out["pred_boxes"], case["pred_boxes"]) > 1e-5
    out = apply(model.clone(padded_query_logit=-1e6), params, case)
    assert np.min(out["pred_logits"]) == -1e6  # not float32's minimum, as Hugging Face's


# ---------------------------------------------------------------- configs and errors


def test_every_tensor_that_does_not_fit_is_named_in_one_error(hf, tmp_path):
    from safetensors.numpy import save_file

    case = hf["owlv2"]
    state = dict(case["state"])
    del state["objectness_head.dense1.bias"], state["owlv2.vision_model.pre_layernorm.bias"]
    state["class_head.dense0.weight"] = state["class_head.dense0.weight"][:, :-1]
    state["owlv2.vision_model.head.weight"] = np.zeros((3, WIDTH), np.float32)
    (tmp_path / "config.json").write_text((case["folder"] / "config.json").read_text())
    save_file({k: np.array(v, order="C") for k, v in state.items()}, tmp_path / "model.safetensors")
    with pytest.raises(PretrainedInitError) as info:
        weights.load_hf_owl_vit(tmp_path)
    message = str(info.value)
    assert "read as Hugging Face owlv2 detection model: 4 problems:" in message
    assert f"objectness_head.dense1.bias: missing (expected ({WIDTH},))" in message
    assert f"owlv2.vision_model.pre_layernorm.bias: missing (expected ({WIDTH},))" in message
    assert f"class_head.dense0.weight: ({WIDTH}, {WIDTH - 1}), expected ({WIDTH}, {WIDTH})" in (
        message
    )
    assert "owlv2.vision_model.head.weight: not part of a owlv2 detection model" in message
    with pytest.raises(PretrainedInitError, match="model_type 'clip', not 'owlvit' or 'owlv2'"):
        weights.owl_kwargs_from_hf_config({"model_type": "clip"})
