"""Device meshes and partition rules for the trainer's `parallelism = 'mesh'` mode.

The mesh has three named axes: `data` (the batch is split over it, parameters replicated),
`fsdp` (the batch is split over it too, and parameters and optimizer state are sharded
over it: fully sharded data parallelism) and `model` (tensor parallelism: the rules split
matmul weights over it, the batch is replicated). Sizes come from `config.mesh`; -1 is
"the rest of the devices".

A parameter's sharding comes from the first rule whose regex `re.search`es its path
('encoderblock_3/MlpBlock_3/Dense_0/kernel'). A rule's value is a spec (one entry per
trailing axis of the array: a mesh axis name, a list of names, or None; shorter specs
leave the leading axes unsharded, so one rule serves a block stacked by layer scan), or
'fsdp' (the largest axis that divides over the fsdp axis, as big_vision's FSDP), or
'replicate'. Optimizer-state arrays shaped like their parameter (Adam's moments) and the
parameter EMA share the parameter's sharding; anything else is replicated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from scenic.common_lib.config_utils import ConfigError
from scenic.model_lib import vit_encoder
from scenic.train_lib.optimizers import param_path as path_name

MESH_AXES = ("data", "fsdp", "model")
#: The batch axis is split over these mesh axes (model-parallel devices share examples).
BATCH_AXES = ("data", "fsdp")
#: Parameters stacked over layers by `vit_encoder`'s layer scan: axis 0 is the layer axis,
#: which the automatic FSDP rule never shards.
SCANNED = vit_encoder.SCANNED_PATH

#: ViT-style defaults (the core `vit_encoder` names, also ViViT's and the projects' blocks):
#: Megatron-style tensor parallelism of attention heads and the MLP's hidden units over
#: `model`, the other matmul axis over `fsdp`, and every other array FSDP-sharded where it
#: divides. With fsdp = model = 1 every array is replicated: plain data parallelism.
DEFAULT_RULES = (
    (r"MultiHeadDotProductAttention_\d+/(query|key|value)/kernel$", ("fsdp", "model", None)),
    (r"MultiHeadDotProductAttention_\d+/(query|key|value)/bias$", ("model", None)),
    (r"MultiHeadDotProductAttention_\d+/out/kernel$", ("model", None, "fsdp")),
    (r"MlpBlock_\d+/Dense_0/kernel$", ("fsdp", "model")),
    (r"MlpBlock_\d+/Dense_0/bias$", ("model",)),
    (r"MlpBlock_\d+/Dense_1/kernel$", ("model", "fsdp")),
    (r".*", "fsdp"),
)


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """`config.mesh` -> {axis: size} over `num_devices`, -1 resolved; ConfigError if the
    sizes are not positive integers or do not multiply to the device count. Axes left out
    are 1, except `data`, which is -1 (the rest) unless another axis is."""
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise ConfigError(f"mesh has unknown axes {unknown}; the axes are {list(MESH_AXES)}.")
    data = 1 if -1 in sizes.values() else -1
    shape = {axis: sizes.get(axis, data if axis == "data" else 1) for axis in MESH_AXES}
    for axis, size in shape.items():
        if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
            raise ConfigError(f"mesh.{axis} must be a positive integer or -1, got {size!r}.")
    rest = [axis for axis, size in shape.items() if size == -1]
    if len(rest) > 1:
        raise ConfigError(f"Only one mesh axis may be -1, got {rest}.")
    known = math.prod(size for size in shape.values() if size != -1)
    if rest:
        if num_devices % known:
            raise ConfigError(
                f"mesh {dict(shape)}: {num_devices} devices do not divide by the fixed axes "
                f"({known})."
            )
        shape[rest[0]] = num_devices // known
    if math.prod(shape.values()) != num_devices:
        raise ConfigError(
            f"mesh {dict(shape)} holds {math.prod(shape.values())} devices, but there are "
            f"{num_devices}."
        )
    return shape


def make_mesh(sizes: Mapping[str, int], devices: Sequence | None = None) -> Mesh:
    """The (data, fsdp, model) mesh over `devices` (default: every device of every process,
    in process order, so each host's devices hold a contiguous block of the batch)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(sizes, len(devices))
    grid = np.array(devices, dtype=object).reshape([shape[a] for a in MESH_AXES])
    return Mesh(grid, MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Examples split over the data and fsdp axes, replicated over model."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _rule_text(index: int, rule) -> str:
    return f"partition rule {index} ('{rule[0]}' -> {rule[1]!r})"


def _axis_names(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _explicit_spec(name, shape, spec, mesh_sizes, rule_text) -> P:
    if len(spec) > len(shape):
        raise ConfigError(
            f"{rule_text} names {len(spec)} axes but parameter {name} has shape {shape}."
        )
    full = (None,) * (len(shape) - len(spec)) + tuple(spec)
    for dim, (size, entry) in enumerate(zip(shape, full, strict=True)):
        axes = _axis_names(entry)
        unknown = [a for a in axes if a not in mesh_sizes]
        if unknown:
            raise ConfigError(f"{rule_text}: unknown mesh axis {unknown[0]!r} (axes: {MESH_AXES}).")
        ways = math.prod(mesh_sizes[a] for a in axes)
        if size % ways:
            raise ConfigError(
                f"{rule_text}: parameter {name} axis {dim} of size {size} is not divisible "
                f"by mesh axes {list(axes)} of size {ways}."
            )
    return P(*(tuple(e) if isinstance(e, list) else e for e in full))


def _auto_fsdp_spec(name, shape, fsdp: int) -> P:
    """The largest axis that divides over fsdp (ties: the last), else replicated."""
    first = 1 if SCANNED.search(name) else 0
    candidates = [d for d in range(first, len(shape)) if fsdp > 1 and shape[d] % fsdp == 0]
    if not candidates:
        return P()
    best = max(candidates, key=lambda d: (shape[d], d))
    return P(*(["fsdp" if d == best else None for d in range(len(shape))]))


def check_rules(rules) -> tuple:
    """`config.partition_rules` as a tuple of (regex, value); ConfigError naming a malformed
    rule."""
    checked = []
    for index, rule in enumerate(rules):
        if not isinstance(rule, list | tuple) or len(rule) != 2 or not isinstance(rule[0], str):
            raise ConfigError(f"partition rule {index} must be (regex, spec), got {rule!r}.")
        pattern, value = rule
        try:
            re.compile(pattern)
        except re.error as error:
            raise ConfigError(f"{_rule_text(index, rule)}: bad regex ({error}).") from None
        if isinstance(value, str):
            if value not in ("fsdp", "replicate"):
                raise ConfigError(
                    f"{_rule_text(index, rule)}: a string value must be 'fsdp' or 'replicate'."
                )
        elif not isinstance(value, list | tuple) or not all(
            e is None or isinstance(e, str) or isinstance(e, list | tuple) for e in value
        ):
            raise ConfigError(
                f"{_rule_text(index, rule)}: the spec must list a mesh axis name, a list of "
                "names or None per array axis."
            )
        checked.append((pattern, value))
    return tuple(checked)


def param_specs(params, mesh_sizes: Mapping[str, int], rules=None):
    """PartitionSpecs for `params` (a tree of arrays or ShapeDtypeStructs) from `rules`
    (default DEFAULT_RULES). ConfigError names the rule and the parameter when a rule shards
    an axis that does not divide over its mesh axes, and, for rules given in the config, when
    a rule matches no parameter. Parameters no rule matches are replicated."""
    given = rules is not None and len(rules) > 0
    rules = check_rules(rules) if given else DEFAULT_RULES
    used = [False] * len(rules)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    specs = []
    for path, leaf in flat:
        name, shape = path_name(path), tuple(np.shape(leaf))
        spec = P()
        for index, (pattern, value) in enumerate(rules):
            if re.search(pattern, name):
                used[index] = True
                if value == "fsdp":
                    spec = _auto_fsdp_spec(name, shape, mesh_sizes["fsdp"])
                elif value != "replicate":
                    spec = _explicit_spec(
                        name, shape, value, mesh_sizes, _rule_text(index, rules[index])
                    )
                break
        specs.append(spec)
    if given:
        for index, rule in enumerate(rules):
            if not used[index]:
                raise ConfigError(f"{_rule_text(index, rule)} matches no parameter.")
    return jax.tree_util.tree_unflatten(treedef, specs)


def state_specs(state: Mapping, param_spec_tree) -> dict:
    """Specs for a train-state dict (`TrainState.to_dict()` or its abstract shapes): the
    parameter and EMA specs, optimizer-state arrays shaped like a parameter whose path ends
    theirs with that parameter's spec, everything else replicated."""
    by_name = {}
    for path, spec in jax.tree_util.tree_flatten_with_path(
        param_spec_tree, is_leaf=lambda x: isinstance(x, P)
    )[0]:
        by_name[path_name(path)] = spec
    param_shapes = {
        path_name(path): tuple(np.shape(leaf))
        for path, leaf in jax.tree_util.tree_flatten_with_path(state["params"])[0]
    }

    def spec_of(path, leaf):
        name = path_name(path)
        if name.startswith(("params/", "ema_params/")):
            return by_name[name.split("/", 1)[1]]
        if name.startswith("opt_state/"):
            parts = name.split("/")
            for start in range(1, len(parts)):
                suffix = "/".join(parts[start:])
                if suffix in by_name:
                    if param_shapes[suffix] == tuple(np.shape(leaf)):
                        return by_name[suffix]
                    return P()
        return P()

    return jax.tree_util.tree_map_with_path(spec_of, dict(state))


def shardings(mesh: Mesh, specs):
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, P)
    )


def per_device_bytes(tree_shardings, tree) -> int:
    """Bytes each device holds of `tree` laid out by `tree_shardings` (the largest device)."""
    total = 0
    for sharding, leaf in zip(
        jax.tree.leaves(tree_shardings, is_leaf=lambda x: isinstance(x, NamedSharding)),
        jax.tree.leaves(tree),
        strict=True,
    ):
        shard = sharding.shard_shape(tuple(np.shape(leaf)))
        total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
    return total
