"""Exports a model for serving outside this code: StableHLO, TF SavedModel or ONNX, with a
model card. The `export` verb of every project's CLI (`export_command`) runs it on a workdir.

    servable = Servable.from_trained(trained)          # or Servable(model, variables)
    export(servable, "onnx", "out/", batch=None)       # None: a symbolic (dynamic) batch

Formats (each file holds the weights; inputs and outputs are flat and named: an array is
`inputs` / `outputs`, a dict of modalities or outputs gives one name per leaf, e.g. `rgb`,
`spectrogram`, `pred_logits`, `pred_boxes`; nested keys are joined with `_`):
- `stablehlo`: `model.stablehlo`, `jax.export`'s serialisation lowered for `platforms`
  (default cpu and cuda). `jax.export.deserialize(data).call(inputs)` takes the model's own
  input tree (an array or the dict of modalities) and returns its output tree.
- `savedmodel`: a TF SavedModel (the output folder itself, via `jax2tf`, weights as
  variables) whose `serving_default` signature takes the named inputs and returns a dict of
  the named outputs. TensorFlow is imported only here.
- `onnx`: `model.onnx` (via `jax2onnx`), run through onnxruntime before it is kept.

Floating inputs are cast to the run's compute dtype inside the exported function and
floating outputs come back as float32, as `TrainedModel` does. Every export is loaded back
and run on a random batch (the fixed batch, or 3 examples under a dynamic batch) and must
match the JAX model (max |difference| <= 1e-4 x max(1, max |output|)) before the output
folder appears: files are written into a temporary folder beside it and renamed at the end,
so a failed export leaves nothing. A model that a format cannot express is an `ExportError`
naming the model, the format and the converter's reason.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scenic.common_lib.runner import UsageError

FORMATS = ("stablehlo", "savedmodel", "onnx")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
DEFAULT_PLATFORMS = ("cpu", "cuda")
DYNAMIC_BATCH_SIZE = 3  # the batch a dynamic-batch export is checked on
TOLERANCE = 1e-4
CARD_FILE = "model_card.json"
ONNX_INSTALL = "pip install 'scenic-core[export]' (jax2onnx, onnx, onnxruntime)"


class ExportError(UsageError):
    """A model that a format (or a dynamic batch in it) cannot express, or an export whose
    outputs differ from the model's: one line, exit code 2, nothing written."""


@dataclasses.dataclass(eq=False)
class Servable:
    """A base model's inference pass with its variables, as one function of its inputs.

    Attributes:
      model: the `BaseModel` (its `inference_apply` and `input_spec`).
      variables: `{'params': ..., **model_state}`.
      dtype: the compute dtype floating inputs are cast to (None: float32).
      name: the model's name in errors and the model card (default: the class name).
    """

    model: Any
    variables: dict
    dtype: Any = None
    name: str | None = None

    @classmethod
    def from_trained(cls, trained) -> Servable:
        """From a `scenic.train_lib.trained_model.TrainedModel`."""
        return cls(trained.model, trained.variables, trained.dtype, trained.config.model_name)

    @property
    def model_name(self) -> str:
        return self.name or type(self.model).__name__

    def apply(self, variables, inputs):
        from scenic.train_lib import precision

        inputs = precision.cast_inputs({"inputs": inputs}, self.dtype or jnp.float32)["inputs"]
        return precision.to_float32(self.model.inference_apply(variables, inputs))

    def function(self, inputs):
        """The model with its variables as constants: what the exporters trace."""
        return self.apply(self.variables, inputs)

    def __call__(self, inputs):
        """The JAX model's outputs (jitted: the reference an export is checked against)."""
        if not hasattr(self, "_jitted"):
            self._jitted = jax.jit(self.apply)
        return self._jitted(self.variables, inputs)

    def input_spec(self, batch: int | None):
        """The model's input tree of `jax.ShapeDtypeStruct`s with a batch of `batch`, or a
        symbolic batch `b` (shared by every input) when `batch` is None."""
        if batch is None:
            (size,) = jax.export.symbolic_shape("b")
        else:
            size = int(batch)
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct((size, *s.shape[1:]), s.dtype), self.model.input_spec()
        )

    def output_spec(self, batch: int | None):
        return jax.eval_shape(self.function, self.input_spec(batch))


def leaf_names(tree, default: str) -> list[str]:
    """One name per leaf of `tree` (jax.tree order): `default` for a bare array, else the
    keys on the leaf's path joined with `_` (`rgb`, `pred_logits`, `aux_outputs_0_pred_boxes`)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    names = []
    for path, _leaf in flat:
        parts = []
        for key in path:
            for attr in ("key", "name", "idx"):
                if hasattr(key, attr):
                    parts.append(str(getattr(key, attr)))
                    break
        name = "_".join(parts)
        names.append(name if name and not name[0].isdigit() else f"{default}{name and '_'}{name}")
    if len(set(names)) != len(names):
        raise ExportError(f"Leaves with the same name after flattening: {names}.")
    return names


def sample_inputs(spec, seed: int = 0):
    """A random batch matching the (concrete) spec tree: normal floats, zeros otherwise."""
    rng = np.random.default_rng(seed)

    def sample(s):
        if jnp.issubdtype(s.dtype, jnp.floating):
            return rng.standard_normal(s.shape).astype(s.dtype)
        return np.zeros(s.shape, s.dtype)

    return jax.tree.map(sample, spec)


def describe(spec, names: Sequence[str]) -> list[dict]:
    """[{name, shape (null for a symbolic dimension), dtype}] of the leaves of `spec`."""
    return [
        {
            "name": name,
            "shape": [d if isinstance(d, int) else None for d in leaf.shape],
            "dtype": np.dtype(leaf.dtype).name,
        }
        for name, leaf in zip(names, jax.tree.leaves(spec))
    ]


def max_difference(got: Sequence, expected: Sequence) -> tuple[float, float]:
    """(max |got - expected|, max |expected|) over the leaves."""
    diff = max(
        float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(e, np.float64)), initial=0))
        for g, e in zip(got, expected)
    )
    scale = max(float(np.max(np.abs(np.asarray(e)), initial=0)) for e in expected)
    return diff, scale


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def conversion_error(servable: Servable, fmt: str, batch, error: BaseException) -> ExportError:
    logging.getLogger(__name__).debug("Export failed", exc_info=error)
    what = "with a dynamic batch" if batch is None else f"with batch {batch}"
    return ExportError(
        f"{servable.model_name} cannot be exported to {fmt} {what}: {first_line(error)}"
    )


# ----------------------------------------------------------------------------- formats


def export_stablehlo(
    servable: Servable, directory: pathlib.Path, batch: int | None, platforms: Sequence[str]
) -> dict:
    """`model.stablehlo`: `jax.export` of the model for `platforms`; checked on the CPU."""
    try:
        exported = jax.export.export(jax.jit(servable.function), platforms=tuple(platforms))(
            servable.input_spec(batch)
        )
        data = exported.serialize()
    except Exception as error:
        raise conversion_error(servable, "stablehlo", batch, error) from None
    (directory / "model.stablehlo").write_bytes(data)

    def run(inputs):
        if "cpu" not in platforms:
            return None
        return jax.tree.leaves(jax.export.deserialize(data).call(inputs))

    return {"files": ["model.stablehlo"], "run": run, "runtime": "jax.export (cpu)"}


def export_savedmodel(
    servable: Servable, directory: pathlib.Path, batch: int | None, platforms: Sequence[str]
) -> dict:
    """A SavedModel in `directory`: `serving_default(**named inputs) -> {name: output}`."""
    try:
        import tensorflow as tf
        from jax.experimental import jax2tf
    except ImportError as error:
        raise ExportError(f"--format savedmodel needs TensorFlow: {error}.") from None

    spec = servable.input_spec(batch)
    in_names = leaf_names(spec, "inputs")
    out_names = leaf_names(servable.output_spec(batch), "outputs")
    in_leaves, in_tree = jax.tree.flatten(spec)
    var_leaves, var_tree = jax.tree.flatten(servable.variables)

    def flat_fn(var_list, *inputs):
        variables = jax.tree.unflatten(var_tree, var_list)
        return tuple(
            jax.tree.leaves(servable.apply(variables, jax.tree.unflatten(in_tree, inputs)))
        )

    try:
        converted = jax2tf.convert(
            flat_fn,
            polymorphic_shapes=[None, *[None if batch else "(b, ...)" for _ in in_leaves]],
            native_serialization_platforms=tuple(platforms),
            with_gradient=False,
        )
        module = tf.Module()
        module.variables_list = [tf.Variable(np.asarray(v), trainable=False) for v in var_leaves]
        signature = [
            tf.TensorSpec([batch, *leaf.shape[1:]], tf.as_dtype(leaf.dtype), name=name)
            for name, leaf in zip(in_names, in_leaves)
        ]

        @tf.function(input_signature=signature, autograph=False)
        def serve(*inputs):
            outputs = converted(module.variables_list, *inputs)
            return dict(zip(out_names, outputs))

        module.serve = serve
        concrete = serve.get_concrete_function()
        tf.saved_model.save(module, str(directory), signatures={"serving_default": concrete})
    except Exception as error:
        raise conversion_error(servable, "savedmodel", batch, error) from None

    def run(inputs):
        loaded = tf.saved_model.load(str(directory))
        feed = {n: tf.constant(x) for n, x in zip(in_names, jax.tree.leaves(inputs))}
        result = loaded.signatures["serving_default"](**feed)
        return [result[n].numpy() for n in out_names]

    files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    return {"files": files, "run": run, "runtime": f"tensorflow {tf.__version__}"}


def import_onnx_plugins(plugin_system) -> None:
    """jax2onnx's rules for JAX primitives and Flax Linen layers (~3 s; the latter handle
    reshapes under a symbolic batch), not all its plugin trees: the equinox examples take
    ~20 s to import and the dm-pix plugins do not load on this JAX (jax2onnx 0.13)."""
    if getattr(plugin_system, "_already_imported_plugins", True):
        return
    root = pathlib.Path(plugin_system.__file__).parent
    for tree in ("jax", "flax/linen"):
        plugin_system._import_tree(root / tree, "jax2onnx.plugins." + tree.replace("/", "."))
    plugin_system._already_imported_plugins = True


def export_onnx(
    servable: Servable, directory: pathlib.Path, batch: int | None, platforms: Sequence[str]
) -> dict:
    """`model.onnx` (jax2onnx), named inputs and outputs, a symbolic `B` batch if dynamic."""
    del platforms  # ONNX is run by onnxruntime's providers, whatever the platform
    try:
        import jax2onnx
        import onnxruntime
        from jax2onnx.plugins import plugin_system
    except ImportError as error:
        raise ExportError(f"--format onnx needs {ONNX_INSTALL}: {error}.") from None

    spec = servable.input_spec(batch)
    in_names = leaf_names(spec, "inputs")
    out_names = leaf_names(servable.output_spec(batch), "outputs")
    in_leaves, in_tree = jax.tree.flatten(spec)

    def flat_fn(*inputs):
        return tuple(jax.tree.leaves(servable.function(jax.tree.unflatten(in_tree, inputs))))

    # jax2onnx logs each conversion on the root logger and onnx_ir warns about values of
    # unknown type it leaves out: neither is for the user.
    quiet = [logging.getLogger(n) for n in ("jax2onnx", "onnx_ir", "")]
    levels = [q.level for q in quiet]
    try:
        for q in quiet:
            q.setLevel(max(q.level, logging.ERROR if q.name != "root" else logging.WARNING))
        import_onnx_plugins(plugin_system)
        proto = jax2onnx.to_onnx(
            flat_fn,
            in_leaves,
            model_name=servable.model_name,
            input_names=in_names,
            output_names=out_names,
        )
        data = proto.SerializeToString()
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise conversion_error(servable, "onnx", batch, error) from None
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    (directory / "model.onnx").write_bytes(data)

    def run(inputs):
        feed = {n: np.asarray(x) for n, x in zip(in_names, jax.tree.leaves(inputs))}
        return session.run(out_names, feed)

    return {
        "files": ["model.onnx"],
        "run": run,
        "runtime": f"onnxruntime {onnxruntime.__version__}",
        "converter": f"jax2onnx {importlib.metadata.version('jax2onnx')}",
    }


EXPORTERS: dict[str, Callable[..., dict]] = {
    "stablehlo": export_stablehlo,
    "savedmodel": export_savedmodel,
    "onnx": export_onnx,
}


# ----------------------------------------------------------------------------- the export


def check_out(out: pathlib.Path) -> None:
    """`--out` must not exist, or be an empty folder (UsageError otherwise)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"--out {out} exists and is not empty; give a new or empty folder.")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"--out {out}: {parent} is not a folder.")


def check_request(fmt: str, batch: int | None, platforms: Sequence[str]) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"Unknown --format {fmt!r}; known: {', '.join(FORMATS)}.")
    if batch is not None and batch < 1:
        raise UsageError(f"--batch must be >= 1, got {batch}.")
    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown or not platforms:
        raise UsageError(
            f"Unknown --platforms {unknown or '(none)'}; known: {', '.join(PLATFORMS)}."
        )


def export(
    servable: Servable,
    fmt: str,
    out: str | pathlib.Path,
    *,
    batch: int | None = 1,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    card: dict | None = None,
) -> dict:
    """Exports `servable` in `fmt` into the new folder `out` with `model_card.json` (`card`
    plus the format, batch, platforms, input / output spec and the check's result); `batch`
    None exports a symbolic batch. Returns the model card. Raises UsageError / ExportError
    (nothing written) for a bad request, a model the format cannot express, or outputs
    that differ from the JAX model's."""
    out = pathlib.Path(out)
    check_request(fmt, batch, platforms)
    check_out(out)
    created = next(
        (p for p in reversed([out.absolute(), *out.absolute().parents]) if not p.exists()), None
    )
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.absolute().parent))
    try:
        result = EXPORTERS[fmt](servable, staging, batch, platforms)
        check = verify(servable, fmt, batch, result["run"])
        in_spec = servable.input_spec(batch)
        out_spec = servable.output_spec(batch)
        full_card = {
            **(card or {}),
            "model_name": servable.model_name,
            "format": fmt,
            "files": [*result["files"], CARD_FILE],
            "batch": "dynamic" if batch is None else batch,
            "platforms": list(platforms) if fmt != "onnx" else None,
            "compute_dtype": np.dtype(servable.dtype or jnp.float32).name,
            "inputs": describe(in_spec, leaf_names(in_spec, "inputs")),
            "input_tree": "array" if not isinstance(in_spec, dict) else "dict",
            "outputs": describe(out_spec, leaf_names(out_spec, "outputs")),
            "check": {**check, "runtime": result["runtime"]},
            "versions": versions(result),
        }
        (staging / CARD_FILE).write_text(json.dumps(full_card, indent=2, default=str) + "\n")
        if out.is_dir():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    return full_card


def verify(servable: Servable, fmt: str, batch: int | None, run) -> dict:
    """Runs the export on a random batch against the JAX model: ExportError if they differ."""
    size = DYNAMIC_BATCH_SIZE if batch is None else batch
    inputs = sample_inputs(servable.input_spec(size))
    try:
        got = run(inputs)
    except Exception as error:
        raise ExportError(
            f"{servable.model_name}: the {fmt} export does not run: {first_line(error)}"
        ) from None
    if got is None:
        return {"verified": False, "reason": "not exported for the cpu platform"}
    expected = jax.tree.leaves(jax.device_get(servable(inputs)))
    diff, scale = max_difference(got, expected)
    if not diff <= TOLERANCE * max(1.0, scale):
        raise ExportError(
            f"{servable.model_name}: the {fmt} export's outputs differ from the JAX model's "
            f"by up to {diff:.3g} (max |output| {scale:.3g})."
        )
    return {"verified": True, "batch": size, "max_abs_difference": diff}


def versions(result: dict) -> dict:
    import flax

    found = {"jax": jax.__version__, "flax": flax.__version__}
    if "converter" in result:
        found["converter"] = result["converter"]
    return found


# ----------------------------------------------------------------------------- model card


def workdir_card(trained, workdir: str | pathlib.Path) -> dict:
    """What the model card says of a training run: its config, the step, the final eval
    metrics (`final_metrics.json`, and `eval_metrics.json` from a later `eval`) and how its
    inputs were preprocessed (the data set and its arguments)."""
    workdir = pathlib.Path(workdir)
    config = trained.config.to_dict()
    metrics = {}
    for name in ("final_metrics.json", "eval_metrics.json"):
        path = workdir / name
        if path.is_file():
            try:
                metrics[name.removesuffix(".json")] = json.loads(path.read_text())
            except json.JSONDecodeError:
                continue
    dataset_configs = config.get("dataset_configs", {}) or {}
    meta = trained.model.dataset_meta_data
    return {
        "workdir": str(workdir.absolute()),
        "step": int(trained.step),
        "metrics": metrics,
        "preprocessing": {
            "dataset_name": config.get("dataset_name"),
            "dataset_configs": dataset_configs,
            "sizes_and_normalisation": {
                k: v
                for k, v in dataset_configs.items()
                if any(w in k for w in ("normal", "mean", "std", "scale", "range", "size"))
            },
            "input_dtype": meta.get("input_dtype"),
            "note": (
                "Inputs must be preprocessed as the data set's evaluation pipeline does "
                "(dataset_name with dataset_configs): same sizes, value range and layout."
            ),
        },
        "num_classes": meta.get("num_classes"),
        "class_names": meta.get("class_names"),
        "config": config,
    }
