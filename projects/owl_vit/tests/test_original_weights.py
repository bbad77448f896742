"""OWL-ViT / OWLv2 from the original Scenic checkpoints (Flax msgpack files of
google-research/scenic's `scenic/projects/owl_vit`).

A tiny model's random parameters are written in the original's layout by `original_tree`
below (from the original's module names: `clip/layers.py`'s CLIP, `layers.py`'s heads,
`models.py`'s head names; not from the loader's tables), in each of the three block
namings (OWL-ViT v1 releases, OWLv2 releases, the current code) and the trainers'
wrappers (`optimizer/target`, `params`), saved with `flax.serialization`, and read back
with `load_original_owl_vit`: the same parameters and outputs. Also: the shapes of every
released variant are recognised (on zero-memory arrays), one error names every array that
does not fit, and files that are not checkpoints say so.
"""

import math

import flax.serialization
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scenic.train_lib.pretrained_init import PretrainedInitError
from scenic_owl_vit import model as owl_model
from scenic_owl_vit import original_weights

#: Every width different, so that a transposed or swapped array cannot fit by chance.
TINY = dict(
    embed_dim=16, image_size=32, patch_size=8, vision_width=32, vision_layers=2,
    vision_heads=2, vision_mlp_dim=64, vocab_size=100, context_length=16, text_width=24,
    text_layers=2, text_heads=3, text_mlp_dim=48,
)  # fmt: skip
EOT = TINY["vocab_size"] - 1
#: The original's block names, from its sources: (separator, attention LN, MLP LN).
#: v1 releases: `resblocks.{i}` with ln_1 / ln_2 (clip/layers.py before the rename, and
#: models._fix_old_layernorm); OWLv2 releases: `resblocks.{i}` with ln_0 / ln_1 (what
#: _fix_old_layernorm calls "the new format"); current clip/layers.py: `resblocks_{i}`.
BLOCK_NAMES = {"v1": (".", "ln_1", "ln_2"), "v2": (".", "ln_0", "ln_1"),
               "current": ("_", "ln_0", "ln_1")}  # fmt: skip
#: naming -> (wrapper the trainer saved the parameters in, OWLv2's objectness head).
CASES = {"v1": ("optimizer", False), "v2": ("params", True), "current": ("params", True)}


def random_params(net, seed):
    """`net`'s parameters, every array random (LayerNorms and biases too)."""
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), *inputs(net.image_size))
    rng = np.random.default_rng(seed)
    flat = {}
    for name, x in flax.traverse_util.flatten_dict(shapes["params"], sep="/").items():
        shape = x.shape
        if name.endswith("/scale") and len(shape) == 1:
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif len(shape) >= 2:
            fan_in = shape[0] if name.split("/")[-2] in ("query", "key", "value") else (
                math.prod(shape[:-1]))  # fmt: skip
            value = rng.standard_normal(shape) / math.sqrt(fan_in)
        else:
            value = 0.3 * rng.standard_normal(shape)
        flat[name] = value.astype(np.float32)
    return flax.traverse_util.unflatten_dict(flat, sep="/")


def inputs(image_size, batch=2):
    """Images `[batch, S, S, 3]` and text queries `[3, 16]` (the last one padding)."""
    rng = np.random.default_rng(7)
    images = rng.standard_normal((batch, image_size, image_size, 3)).astype(np.float32)
    tokens = np.zeros((3, TINY["context_length"]), np.int32)
    for row, length in enumerate((4, 9)):
        tokens[row, :length] = rng.integers(1, EOT, length)
        tokens[row, length] = EOT
    return jnp.asarray(images), jnp.asarray(tokens)


def original_tree(params, naming, objectness):
    """Our parameters in the original's tree (`TextZeroShotDetectionModule`'s names);
    `naming` a BLOCK_NAMES key or such a triple."""
    separator, attention_norm, mlp_norm = BLOCK_NAMES.get(naming, naming)

    def norm(p):
        return {"scale": p["scale"], "bias": p["bias"]}

    def dense(p):
        return {"kernel": p["kernel"], "bias": p["bias"]}

    def transformer(tower):  # clip_layers.Transformer of ResidualAttentionBlocks
        blocks = {}
        for i in range(sum(name.startswith("encoderblock_") for name in tower["Transformer"])):
            ours = tower["Transformer"][f"encoderblock_{i}"]
            attention = ours["MultiHeadDotProductAttention_1"]  # nn.SelfAttention: as is
            blocks[f"resblocks{separator}{i}"] = {
                attention_norm: norm(ours["LayerNorm_0"]),
                "attn": {name: dense(attention[name]) for name in ("query", "key", "value",
                                                                   "out")},
                mlp_norm: norm(ours["LayerNorm_2"]),
                "mlp": {"c_fc": dense(ours["MlpBlock_3"]["Dense_0"]),
                        "c_proj": dense(ours["MlpBlock_3"]["Dense_1"])},
            }  # fmt: skip
        return blocks

    clip, heads = params["clip"], params["class_head"]
    visual, text = clip["visual"], clip["text"]
    tree = {
        "backbone": {
            "clip": {
                "visual": {  # VisionTransformer with out_features=None: no `proj`
                    "conv1": {"kernel": visual["embedding"]["kernel"]},
                    "class_embedding": visual["cls"][0, 0],
                    "positional_embedding": visual["posembed_input"]["pos_embedding"][0],
                    "ln_pre": norm(visual["ln_pre"]),
                    "transformer": transformer(visual),
                    "ln_post": norm(visual["Transformer"]["encoder_norm"]),
                },
                "text": {
                    "token_embedding": {"embedding": text["token_embedding"]["embedding"]},
                    "positional_embedding": text["posembed_input"]["pos_embedding"][0],
                    "transformer": transformer(text),
                    "ln_final": norm(text["Transformer"]["encoder_norm"]),
                    "text_projection": {"kernel": text["projection"]["kernel"]},
                },
                "logit_scale": clip["logit_scale"],
            },
            "merged_class_token": norm(params["merged_norm"]),
        },
        "class_head": {"Dense_0": dense(heads["dense0"]),
                       "logit_shift": dense(heads["logit_shift"]),
                       "logit_scale": dense(heads["logit_scale"])},
        "obj_box_head": {f"Dense_{i}": dense(params["box_head"][f"dense{i}"]) for i in range(3)},
    }  # fmt: skip
    if objectness:
        tree["objectness_head"] = {f"Dense_{i}": dense(params["objectness_head"][f"dense{i}"])
                                   for i in range(3)}  # fmt: skip
    if naming == "v1":  # unused arrays the v1 releases carry (models.py pops them)
        tree["class_head"]["padding"] = np.zeros((1, TINY["embed_dim"]), np.float32)
        tree["class_head"]["padding_bias"] = np.zeros((1,), np.float32)
    return tree


def wrapped(tree, wrapper):
    """The tree as the original's trainers saved it: pre-Optax `optimizer/target` (with
    optimizer state that looks like parameters), or a TrainState's `params`."""
    decoy = jax.tree.map(np.ones_like, tree)
    if wrapper == "optimizer":
        return {"optimizer": {"target": tree, "state": {"step": 3, "param_states": decoy}}}
    return {"global_step": 5, "opt_state": {"mu": decoy}, "params": tree}


def write(path, state):
    path.write_bytes(flax.serialization.msgpack_serialize(state))
    return path


def flat_tree(tree):
    return flax.traverse_util.flatten_dict(tree, sep="/")


@pytest.fixture(scope="module")
def sources():
    """objectness -> (net, params, outputs) of a tiny source model."""
    out = {}
    for objectness in (False, True):
        net = owl_model.OWLViT(**TINY, objectness=objectness, **owl_model.ORIGINAL_CONVENTIONS)
        params = random_params(net, seed=int(objectness))
        out[objectness] = (net, params, net.apply({"params": params}, *inputs(TINY["image_size"])))
    return out


def assert_same_outputs(expected, actual):
    assert set(actual) == set(expected)
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-5, atol=1e-6,
                                   err_msg=key)  # fmt: skip


@pytest.mark.parametrize("naming", list(CASES))
def test_loads_each_naming_with_the_same_outputs(tmp_path, sources, naming):
    wrapper, objectness = CASES[naming]
    net, params, expected = sources[objectness]
    file = write(tmp_path / "checkpoint", wrapped(original_tree(params, naming, objectness),
                                                   wrapper))  # fmt: skip

    model, loaded = original_weights.load_original_owl_vit(file)

    for name in (*original_weights.SETTINGS, "merged_norm_epsilon", "gelu_approximate",
                 "padded_query_logit", "hidden_act", "layer_norm_epsilon"):  # fmt: skip
        assert getattr(model, name) == getattr(net, name), name
    source, flat = flat_tree(params), flat_tree(loaded)
    assert set(flat) == set(source)
    for name, value in flat.items():
        assert value.dtype == np.float32 and value.shape == source[name].shape, name
        if name == "clip/visual/projection/kernel":  # the original's image tower has none
            assert not value.any()
        else:
            np.testing.assert_array_equal(value, source[name], err_msg=name)
    outputs = model.apply({"params": loaded}, *inputs(TINY["image_size"]))
    assert ("objectness_logits" in outputs) == objectness
    assert_same_outputs(expected, outputs)


def test_the_block_naming_decides_the_outputs(tmp_path, sources):
    """Negative control: a v1 file whose two block LayerNorms are swapped loads (its names
    are valid) but computes something else, so the comparison above checks the naming."""
    _, params, expected = sources[False]
    tree = original_tree(params, (".", "ln_2", "ln_1"), objectness=False)
    model, loaded = original_weights.load_original_owl_vit(
        write(tmp_path / "swapped", wrapped(tree, "optimizer"))
    )
    outputs = model.apply({"params": loaded}, *inputs(TINY["image_size"]))
    assert not np.allclose(outputs["pred_boxes"], expected["pred_boxes"], rtol=1e-3)


def test_bare_tree_in_bfloat16_and_the_newest_file_of_a_directory(tmp_path, sources):
    """A bare parameter tree (no wrapper) in bfloat16 loads as float32; a directory is read
    at its newest `checkpoint_<step>` (as flax's restore_checkpoint does)."""
    _, params, _ = sources[True]
    tree = jax.tree.map(lambda x: np.asarray(x, jnp.bfloat16),
                        original_tree(params, "v2", objectness=True))  # fmt: skip
    (tmp_path / "checkpoint_2").write_bytes(b"an older, broken file")
    write(tmp_path / "checkpoint_10", tree)
    (tmp_path / "checkpoint_10.tmp").write_bytes(b"not a checkpoint name")

    model, loaded = original_weights.load_original_owl_vit(tmp_path)

    assert model.objectness
    bf16 = flat_tree(jax.tree.map(lambda x: np.asarray(x, jnp.bfloat16), params))
    for name, value in flat_tree(loaded).items():
        if name != "clip/visual/projection/kernel":
            assert value.dtype == np.float32
            np.testing.assert_array_equal(value, bf16[name].astype(np.float32), err_msg=name)


@pytest.mark.parametrize("variant", list(owl_model.VARIANTS))
def test_recognises_every_released_variant(variant):
    """The released shape sets (zero-memory arrays of the full sizes, in the naming of
    their release) give that variant, and their whole layout checks out."""
    net = owl_model.owl_vit(variant)
    objectness = owl_model.VARIANTS[variant]["objectness"]
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), *inputs(net.image_size, 1))
    params = jax.tree.map(lambda s: np.broadcast_to(np.float32(0), s.shape), shapes["params"])
    naming = "v2" if objectness else "v1"
    flat = flat_tree(original_tree(params, naming, objectness))

    kwargs = original_weights.infer_original_kwargs(flat)

    assert kwargs == {name: getattr(net, name) for name in original_weights.SETTINGS}
    assert original_weights.build_model(kwargs) == net
    original_weights.check_original_params(flat, kwargs)


def test_one_error_names_every_array_that_does_not_fit(tmp_path, sources):
    _, params, _ = sources[True]
    tree = original_tree(params, "v2", objectness=True)
    del tree["obj_box_head"]["Dense_1"]["bias"]
    del tree["backbone"]["clip"]["text"]["transformer"]["resblocks.1"]["ln_0"]["scale"]
    tree["backbone"]["merged_class_token"]["scale"] = np.ones(31, np.float32)
    tree["class_head"]["extra"] = {"kernel": np.ones((2, 2), np.float32)}
    file = write(tmp_path / "corrupted", wrapped(tree, "params"))

    with pytest.raises(PretrainedInitError) as info:
        original_weights.load_original_owl_vit(file)

    message = str(info.value)
    assert str(file) in message and "4 problems" in message
    for expected in (
        "obj_box_head/Dense_1/bias: missing (expected (32,))",
        "backbone/clip/text/transformer/resblocks.1/ln_0/scale: missing (expected (24,))",
        "backbone/merged_class_token/scale: (31,), expected (32,)",
        "class_head/extra/kernel: not part of an OWLv2 model",
    ):
        assert expected in message

    # A named variant the file is not: every array that differs, in one error.
    write(file, wrapped(original_tree(params, "v2", objectness=True), "params"))
    with pytest.raises(PretrainedInitError) as info:
        original_weights.load_original_owl_vit(file, variant="owlv2_b16")
    message = str(info.value)
    assert "backbone/clip/visual/conv1/kernel: (8, 8, 3, 32), expected (16, 16, 3, 768)" in message
    assert "backbone/clip/visual/transformer/resblocks.11/ln_0/scale: missing" in message

    # Without the arrays the settings come from, the error says to name a variant.
    del tree["backbone"]["clip"]["visual"]["conv1"]
    with pytest.raises(PretrainedInitError, match="name a variant.*visual/conv1/kernel"):
        original_weights.load_original_owl_vit(write(file, tree))


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"definitely not msgpack \x00\xff\x13", "not a Flax msgpack checkpoint"),
        (b"", "not a Flax msgpack checkpoint"),
        (b"\x01", "decodes to a int, not a dict"),
        (flax.serialization.msgpack_serialize({"step": 1, "model": {"w": np.zeros(3)}}),
         r"no OWL-ViT parameters .*\['model', 'step'\]"),
    ],
)  # fmt: skip
def test_files_that_are_not_checkpoints(tmp_path, content, expected):
    file = tmp_path / "file.msgpack"
    file.write_bytes(content)
    with pytest.raises(PretrainedInitError, match=expected):
        original_weights.load_original_owl_vit(file)


def test_paths_without_a_checkpoint(tmp_path):
    with pytest.raises(PretrainedInitError, match="does not exist"):
        original_weights.load_original_owl_vit(tmp_path / "missing")
    with pytest.raises(PretrainedInitError, match="no checkpoint_<step> file"):
        original_weights.load_original_owl_vit(tmp_path)
