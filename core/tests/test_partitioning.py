"""Partition rules and meshes of the mesh mode: which array gets which sharding, and one
clear error for a mesh or rule that cannot work (naming the rule and the parameter)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from scenic.common_lib.config_utils import ConfigError
from scenic.train_lib import partitioning


def vit_params(width=64, mlp=256, heads=4, layers=2, scanned=False):
    """A ViT parameter tree in the core encoder's names (shapes only)."""
    head_dim = width // heads

    def block():
        return {
            "LayerNorm_0": {"scale": (width,), "bias": (width,)},
            "MultiHeadDotProductAttention_1": {
                **{
                    name: {"kernel": (width, heads, head_dim), "bias": (heads, head_dim)}
                    for name in ("query", "key", "value")
                },
                "out": {"kernel": (heads, head_dim, width), "bias": (width,)},
            },
            "LayerNorm_2": {"scale": (width,), "bias": (width,)},
            "MlpBlock_3": {
                "Dense_0": {"kernel": (width, mlp), "bias": (mlp,)},
                "Dense_1": {"kernel": (mlp, width), "bias": (width,)},
            },
        }

    encoder = {"encoder_norm": {"scale": (width,), "bias": (width,)}}
    if scanned:
        encoder["encoderblock"] = jax.tree.map(
            lambda s: (layers, *s), block(), is_leaf=lambda x: isinstance(x, tuple)
        )
    else:
        encoder.update({f"encoderblock_{i}": block() for i in range(layers)})
    tree = {
        "embedding": {"kernel": (4, 4, 3, width), "bias": (width,)},
        "Transformer": encoder,
        "head": {"kernel": (width, 10), "bias": (10,)},
    }
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s, jnp.float32), tree, is_leaf=lambda x: isinstance(x, tuple)
    )


SIZES = {"data": 1, "fsdp": 4, "model": 2}


def test_mesh_shape_resolves_the_rest_and_rejects_what_cannot_fit():
    assert partitioning.mesh_shape({"data": -1, "fsdp": 2, "model": 1}, 8) == {
        "data": 4,
        "fsdp": 2,
        "model": 1,
    }
    assert partitioning.mesh_shape({"fsdp": 2}, 8)["data"] == 4  # data is the rest
    assert partitioning.mesh_shape({"fsdp": -1}, 8) == {"data": 1, "fsdp": 8, "model": 1}
    for sizes, message in (
        ({"data": 3}, "holds 3 devices, but there are 8"),
        ({"fsdp": 3}, "do not divide by the fixed axes"),
        ({"data": -1, "fsdp": -1}, "Only one mesh axis may be -1"),
        ({"fdsp": 2}, "unknown axes ['fdsp']"),
        ({"model": 0}, "mesh.model must be a positive integer or -1"),
    ):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            partitioning.mesh_shape(sizes, 8)


def test_default_rules_shard_heads_and_mlp_over_model_and_the_rest_over_fsdp():
    specs = partitioning.param_specs(vit_params(), SIZES)
    block = specs["Transformer"]["encoderblock_1"]
    attention = block["MultiHeadDotProductAttention_1"]
    assert attention["query"]["kernel"] == P("fsdp", "model", None)
    assert attention["value"]["bias"] == P("model", None)
    assert attention["out"]["kernel"] == P("model", None, "fsdp")
    assert block["MlpBlock_3"]["Dense_0"]["kernel"] == P("fsdp", "model")
    assert block["MlpBlock_3"]["Dense_1"]["kernel"] == P("model", "fsdp")
    # Automatic FSDP: the largest axis that divides by 4; none divides -> replicated.
    assert specs["embedding"]["kernel"] == P(None, None, None, "fsdp")
    assert specs["head"]["kernel"] == P("fsdp", None)
    assert specs["head"]["bias"] == P()  # 10 does not divide by 4
    # Plain data parallelism: arrays name only axes of size 1, so each is whole everywhere.
    flat = jax.tree.leaves(
        partitioning.param_specs(vit_params(), {"data": 8, "fsdp": 1, "model": 1}),
        is_leaf=lambda x: isinstance(x, P),
    )
    named = {axis for spec in flat for axis in spec if axis is not None}
    assert named == {"fsdp", "model"}


def test_scanned_blocks_keep_their_layer_axis_unsharded():
    specs = partitioning.param_specs(vit_params(layers=8, scanned=True), SIZES)
    block = specs["Transformer"]["encoderblock"]
    assert block["MlpBlock_3"]["Dense_0"]["kernel"] == P(None, "fsdp", "model")
    # 8 layers would divide by 4, but the automatic rule never shards the layer axis.
    assert block["LayerNorm_0"]["scale"] == P(None, "fsdp")


def test_config_rules_override_the_defaults():
    rules = (
        (r"head/kernel$", ("fsdp", None)),
        (r"MlpBlock_3/Dense_0/kernel$", (None, ["fsdp", "model"])),
        (r".*", "replicate"),
    )
    specs = partitioning.param_specs(vit_params(), SIZES, rules)
    assert specs["head"]["kernel"] == P("fsdp", None)
    assert specs["Transformer"]["encoderblock_0"]["MlpBlock_3"]["Dense_0"]["kernel"] == P(
        None, ("fsdp", "model")
    )
    assert specs["embedding"]["kernel"] == P()


@pytest.mark.parametrize(
    "rules, message",
    [
        (((r"head/bias$", ("fsdp",)),), r"head/bias axis 0 of size 10 is not divisible by mesh "),
        (((r"Dense_0/kernel$", (None, ["fsdp", "model"])),), r"size 36 is not divisible"),
        (((r"no_such_layer", ("fsdp",)),), r"partition rule 0 \('no_such_layer'.* matches no"),
        (((r"head/kernel$", ("fsdp", None, None)),), r"names 3 axes but parameter head/kernel"),
        (((r"head/kernel$", ("tensor", None)),), r"unknown mesh axis 'tensor'"),
        (((r"head/kernel$", "shard"),), r"must be 'fsdp' or 'replicate'"),
        (((r"head/kernel$",),), r"partition rule 0 must be \(regex, spec\)"),
        (((r"head/(kernel$", "fsdp"),), r"bad regex"),
    ],
)
def test_a_bad_rule_is_one_error_naming_the_rule_and_the_parameter(rules, message):
    params = vit_params(mlp=36)
    with pytest.raises(ConfigError, match=message):
        partitioning.param_specs(params, {"data": 1, "fsdp": 4, "model": 2}, rules)


def test_the_default_model_rule_fails_where_heads_do_not_split():
    with pytest.raises(ConfigError, match=r"rule 1 .*/key/bias axis 0 of size 3 is not divisible"):
        partitioning.param_specs(vit_params(width=48, heads=3), SIZES)


def test_optimizer_state_and_ema_follow_their_parameters():
    params = jax.tree.map(lambda s: jnp.zeros(s.shape), vit_params())
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": optax.adafactor(1e-3).init(params) + optax.adamw(1e-3).init(params),
        "model_state": {},
        "rng": jnp.zeros((2,), jnp.uint32),
        "ema_params": params,
    }
    param_specs = partitioning.param_specs(params, SIZES)
    specs = partitioning.state_specs(state, param_specs)
    dense = ("Transformer", "encoderblock_0", "MlpBlock_3", "Dense_0", "kernel")

    def at(tree, path):
        for key in path:
            tree = tree[key]
        return tree

    adam = specs["opt_state"][5]  # adamw's ScaleByAdamState, after adafactor's 5 states
    assert at(adam.mu, dense) == at(adam.nu, dense) == P("fsdp", "model")
    assert at(specs["ema_params"], dense) == P("fsdp", "model")
    # Adafactor's factored moments are not shaped like the parameter: replicated.
    factored = [
        spec
        for spec in jax.tree.leaves(specs["opt_state"][0], is_leaf=lambda x: isinstance(x, P))
        if spec != P()
    ]
    assert len(factored) < len(jax.tree.leaves(param_specs, is_leaf=lambda x: isinstance(x, P)))
    assert specs["step"] == specs["rng"] == P()


def test_per_device_bytes_of_a_sharded_layout():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), partitioning.MESH_AXES)
    tree = {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32)}
    shardings = partitioning.shardings(mesh, {"w": P("fsdp", None)})
    assert partitioning.per_device_bytes(shardings, tree) == 8 * 4 * 4
