"""Initialise a model from pretrained parameters (fine-tuning, higher-resolution training).

Parameters are matched by '/'-joined names ('Transformer/encoderblock_0/.../kernel').
Sources: a scenic workdir or Orbax checkpoint directory, or a flat `.npz` whose keys are
'/'-joined names, as the published ViT checkpoints are. From a scenic checkpoint the mutable
model state (BatchNorm statistics) is loaded too, with the same `rename` rules, wherever
the new model has state of the same name and shape (`model_state_from_config`): a ResNet
backbone brings its running statistics along.

`init_from(fresh, restored, ...)`:
  - `rename`: ((regex, replacement), ...) applied in order with `re.sub` to checkpoint names;
  - `reinit`: regexes (full match): model params kept fresh (a new head), and checkpoint
    arrays dropped (e.g. 'pre_logits/.*');
  - position embeddings (names fully matching `posemb`) whose token count differs are
    resampled as big_vision's `resample_posemb` does: bilinear (scipy.ndimage.zoom order=1)
    over the square patch grid, prefix (class) tokens kept;
  - every other shape mismatch, model param missing from the checkpoint (unless
    `allow_missing`) and unused checkpoint array (unless `allow_unused`) is an error that
    lists them all.

Other weight-file layouts (timm or Hugging Face files, other codebases' checkpoints) come
from projects, which know their models' names: a project registers a `CheckpointFormat`
(`register_format`) whose `read` returns the file's arrays renamed and laid out as its
model's parameters. `init_from.checkpoint` is then auto-detected among the registered
formats (each `detect`s its own files from their names) before the built-in 'npz' and
'orbax'; `init_from.format` names one explicitly. Errors name the format the file was read
as; a registered format brings model state only if it has a `read_model_state`.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
import zipfile
from collections.abc import Callable, Mapping

import flax.traverse_util
import jax
import ml_collections
import numpy as np

from scenic.common_lib.config_utils import ConfigError, check_keys, did_you_mean
from scenic.model_lib import vit_encoder

CONFIG_KEYS = (
    "checkpoint",
    "format",
    "rename",
    "reinit",
    "posemb",
    "allow_missing",
    "allow_unused",
)
POSEMB = r"(.*/)?pos_embedding"
#: The layouts the core reads itself (`load_params`): name -> how errors describe it.
BUILTIN_FORMATS = {
    "npz": "flat .npz of '/'-joined parameter names",
    "orbax": "scenic / Orbax checkpoint",
}


class PretrainedInitError(ValueError):
    """The checkpoint does not fit the model; the message lists every problem."""


@dataclasses.dataclass(frozen=True)
class CheckpointFormat:
    """A weight-file layout that a project teaches `init_from` to read (`register_format`).

    Attributes:
      name: the `init_from.format` value.
      description: how messages name it ("timm ViT .safetensors").
      detect: `detect(path) -> bool`: the file or folder at `path` is in this format. It
        must be cheap (names, not arrays) and never raise.
      read: `read(path, model_shapes) -> {'/'-joined name: array}`: the file's arrays
        renamed and laid out as the model's parameters. `model_shapes` ({name: shape} of
        the fresh parameters, possibly empty) lets it lay out what the file leaves implicit
        (e.g. the number of attention heads of a fused projection). A file that does not
        fit the format raises PretrainedInitError naming every missing, mis-shaped or
        unexpected array in the file's own names.
      read_model_state: optional `read_model_state(path) -> {'/'-joined name: array}` of
        the file's mutable model state under its collection ('batch_stats/.../mean'),
        loaded as a scenic checkpoint's is (`model_state_from_config`); None: parameters
        only.
    """

    name: str
    description: str
    detect: Callable[[pathlib.Path], bool]
    read: Callable[[pathlib.Path, Mapping[str, tuple[int, ...]]], dict[str, np.ndarray]]
    read_model_state: Callable[[pathlib.Path], dict[str, np.ndarray]] | None = None


_FORMATS: dict[str, CheckpointFormat] = {}


def register_format(checkpoint_format: CheckpointFormat) -> None:
    """Makes `init_from` read `checkpoint_format` (registering the same object twice is a
    no-op; another format under a taken name is a ValueError)."""
    known = _FORMATS.get(checkpoint_format.name)
    if known is checkpoint_format:
        return
    if known is not None or checkpoint_format.name in BUILTIN_FORMATS:
        raise ValueError(f"Checkpoint format {checkpoint_format.name!r} is already registered.")
    _FORMATS[checkpoint_format.name] = checkpoint_format


def list_formats() -> list[str]:
    return sorted({*BUILTIN_FORMATS, *_FORMATS})


def describe_format(name: str) -> str:
    if name in _FORMATS:
        return f"{_FORMATS[name].description} (format {name!r})"
    return f"{BUILTIN_FORMATS[name]} (format {name!r})"


def detect_format(path: str | pathlib.Path) -> str:
    """The format name of the file or folder at `path`: the one registered format that
    detects it, else 'npz' for an .npz file and 'orbax' for a folder."""
    path = pathlib.Path(path)
    if not path.exists():
        raise PretrainedInitError(f"Pretrained checkpoint {path} does not exist.")
    matches = [name for name, fmt in _FORMATS.items() if fmt.detect(path)]
    if len(matches) > 1:
        raise PretrainedInitError(
            f"Pretrained checkpoint {path} fits several formats ({', '.join(matches)}); "
            "set init_from.format to one of them."
        )
    if matches:
        return matches[0]
    if path.is_dir():
        return "orbax"
    if path.suffix == ".npz":
        return "npz"
    known = "; ".join(f"{name}: {describe_format(name)}" for name in list_formats())
    raise PretrainedInitError(
        f"Cannot tell the format of pretrained file {path}. init_from reads {known}. "
        "If it is one of these, set init_from.format."
    )


def read_pretrained(
    path: str | pathlib.Path,
    format: str | None = None,
    model_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> tuple[dict[str, np.ndarray], str]:
    """({'/'-joined name: array}, the description of the format it was read as) for the
    parameters in `path`, read as `format` (None or 'auto': `detect_format`)."""
    path = pathlib.Path(path)
    name = detect_format(path) if format in (None, "", "auto") else format
    if name not in _FORMATS and name not in BUILTIN_FORMATS:
        raise PretrainedInitError(_unknown_format(name))
    described = describe_format(name)
    if name in BUILTIN_FORMATS:
        return load_params(path), described
    if not path.exists():
        raise PretrainedInitError(f"Pretrained checkpoint {path} does not exist.")
    try:
        return _FORMATS[name].read(path, dict(model_shapes or {})), described
    except PretrainedInitError as error:
        raise PretrainedInitError(f"{path} read as {described}: {error}") from None


def _unknown_format(name) -> str:
    return (
        f"init_from.format {name!r} is unknown.{did_you_mean(str(name), list_formats())} "
        f"Known: auto, {', '.join(list_formats())}."
    )


@dataclasses.dataclass
class InitSummary:
    loaded: list[str] = dataclasses.field(default_factory=list)
    resized: dict[str, tuple] = dataclasses.field(default_factory=dict)  # name: (old, new)
    reinitialised: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)  # kept fresh
    skipped: list[str] = dataclasses.field(default_factory=list)  # dropped by `reinit`
    unused: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} arrays"]
        lines += [f"resized {k}: {old} -> {new}" for k, (old, new) in self.resized.items()]
        for label in ("reinitialised", "missing", "skipped", "unused"):
            if getattr(self, label):
                lines.append(f"{label}: {', '.join(getattr(self, label))}")
        return "; ".join(lines)


def load_params(path: str | pathlib.Path, collection: str = "params") -> dict[str, np.ndarray]:
    """Flat {'/'-joined name: array} from an .npz file or a scenic/Orbax checkpoint dir
    (a workdir, its `checkpoints` dir (latest step), or one step's directory). From a
    scenic train state, `collection` picks 'params' or 'model_state' ({} from an .npz)."""
    path = pathlib.Path(path)
    if path.is_file():
        if path.suffix != ".npz":
            raise PretrainedInitError(f"Pretrained file {path} is not an .npz file.")
        if collection != "params":
            return {}
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise PretrainedInitError(f"{path} is not a readable .npz file ({error}).") from None
    if not path.is_dir():
        raise PretrainedInitError(f"Pretrained checkpoint {path} does not exist.")
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    steps = [p for p in path.iterdir() if p.is_dir() and p.name.isdigit()]
    if steps:
        path = max(steps, key=lambda p: int(p.name))
    if (path / "default").is_dir():
        path = path / "default"
    return _restore_orbax_params(path, collection)


def _restore_orbax_params(path: pathlib.Path, collection: str = "params") -> dict:
    import orbax.checkpoint as ocp

    checkpointer = ocp.PyTreeCheckpointer()
    try:
        metadata = checkpointer.metadata(path)
    except (FileNotFoundError, ValueError) as e:
        raise PretrainedInitError(f"No Orbax checkpoint found at {path}: {e}") from e
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    if "params" in tree:  # a scenic train state: read only the collection asked for
        if collection not in tree:
            return {}
        tree = {collection: tree[collection]}
    elif collection != "params":
        return {}
    item = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    restored = checkpointer.restore(
        path, args=ocp.args.PyTreeRestore(item, restore_args=restore_args, partial_restore=True)
    )
    return flatten(restored.get(collection, restored))


def flatten(tree) -> dict[str, np.ndarray]:
    """{'/'-joined name: array} from a nested (or already flat) dict."""
    if not any(isinstance(v, Mapping) for v in tree.values()):
        return dict(tree)
    return flax.traverse_util.flatten_dict(tree, sep="/")


def init_from(
    params,
    restored,
    *,
    rename=(),
    reinit=(),
    posemb: str = POSEMB,
    allow_missing: bool = False,
    allow_unused: bool = False,
):
    """Returns (params with the pretrained arrays copied in, InitSummary).

    `params`: the fresh nested params; `restored`: nested or flat ('/'-joined) arrays.
    """
    fresh = flatten(params)
    # Encoder blocks stacked by layer scan or one per layer, as the model has them.
    source = vit_encoder.stack_layers(_renamed(flatten(restored), rename), fresh)
    for pattern in reinit:
        if not any(re.fullmatch(pattern, n) for n in (*fresh, *source)):
            raise PretrainedInitError(
                f"reinit pattern {pattern!r} matches no model parameter or checkpoint array."
            )

    def is_reinit(name):
        return any(re.fullmatch(p, name) for p in reinit)

    summary, out, problems = InitSummary(), {}, []
    for name, value in fresh.items():
        out[name] = value
        if is_reinit(name):
            summary.reinitialised.append(name)
        elif name not in source:
            summary.missing.append(name)
            if not allow_missing:
                problems.append(f"{name}: missing in checkpoint (model {np.shape(value)})")
        elif np.shape(source[name]) == np.shape(value):
            out[name] = np.asarray(source[name]).astype(value.dtype)
            summary.loaded.append(name)
        else:
            resized = _resize_posemb(source[name], value) if re.fullmatch(posemb, name) else None
            if resized is None:
                problems.append(
                    f"{name}: checkpoint {np.shape(source[name])} != model {np.shape(value)}"
                )
            else:
                out[name] = resized.astype(value.dtype)
                summary.resized[name] = (np.shape(source[name]), np.shape(value))
    for name in source:
        if is_reinit(name):
            summary.skipped.append(name)
        elif name not in fresh:
            summary.unused.append(name)
    if summary.unused and not allow_unused:
        problems += [f"{name}: in checkpoint, not used by the model" for name in summary.unused]
    if problems:
        raise PretrainedInitError(
            f"Pretrained parameters do not fit the model ({len(problems)} problems):\n  "
            + "\n  ".join(problems)
            + "\nUse init_from.rename / reinit / allow_missing / allow_unused as intended."
        )
    return flax.traverse_util.unflatten_dict(out, sep="/"), summary


def _renamed(source: dict, rules) -> dict:
    for pattern, replacement in rules:
        if not any(re.search(pattern, n) for n in source):
            raise PretrainedInitError(f"rename pattern {pattern!r} matches no checkpoint name.")
        renamed = {re.sub(pattern, replacement, n): v for n, v in source.items()}
        if len(renamed) != len(source):
            raise PretrainedInitError(
                f"rename rule ({pattern!r}, {replacement!r}) maps two checkpoint names to one."
            )
        source = renamed
    return source


def _resize_posemb(old, new) -> np.ndarray | None:
    """Resampled [1, P + g*g, D] table, or None when the shapes are no square-grid pair."""
    old, (lead, n_new, width) = np.asarray(old), np.shape(new)
    if old.ndim != 3 or old.shape[0] != lead or old.shape[2] != width:
        return None
    for prefix in range(min(old.shape[1], n_new, 17)):  # smallest prefix making both square
        g_old, g_new = math.isqrt(old.shape[1] - prefix), math.isqrt(n_new - prefix)
        if g_old**2 == old.shape[1] - prefix and g_new**2 == n_new - prefix:
            return resample_posemb(old, (g_new, g_new), num_prefix_tokens=prefix)
    return None


def resample_posemb(posemb, new_grid, num_prefix_tokens: int = 0, old_grid=None) -> np.ndarray:
    """[1, P + h*w, D] -> [1, P + H*W, D]: bilinear resize of the (h, w) grid part with the
    corner-aligned sampling of scipy.ndimage.zoom(order=1); the P prefix tokens are kept."""
    posemb = np.asarray(posemb, np.float64)
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
    if old_grid is None:
        side = math.isqrt(grid.shape[0])
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != grid.shape[0]:
        raise ValueError(f"posemb grid of {grid.shape[0]} tokens is not {old_grid}.")
    grid = grid.reshape(*old_grid, -1)
    for axis, size in enumerate(new_grid):
        grid = _linear_resize(grid, size, axis)
    return np.concatenate([prefix, grid.reshape(1, -1, grid.shape[-1])], axis=1)


def _linear_resize(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    n = x.shape[axis]
    pos = np.arange(size) * ((n - 1) / (size - 1) if size > 1 else 0.0)
    lo = np.clip(np.floor(pos).astype(int), 0, n - 1)
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * x.ndim
    shape[axis] = size
    w = (pos - lo).reshape(shape)
    return np.take(x, lo, axis) * (1 - w) + np.take(x, hi, axis) * w


def check_config(config: ml_collections.ConfigDict | None) -> None:
    """Checks `config.init_from` before a run starts: known keys, an existing checkpoint."""
    if not config:
        return
    check_keys(config, CONFIG_KEYS, "init_from")
    path = config.get("checkpoint")
    if path and not pathlib.Path(path).exists():
        raise ConfigError(f"init_from.checkpoint {path!r} does not exist.")
    name = config.get("format")
    if name not in (None, "", "auto") and name not in list_formats():
        raise ConfigError(_unknown_format(name))
    if path and name in (None, "", "auto"):
        try:  # names only, cheap: a file of no known layout is refused before the run starts
            detect_format(path)
        except PretrainedInitError as error:
            raise ConfigError(str(error)) from None


def model_state_from_config(model_state, config: ml_collections.ConfigDict | None):
    """The fresh `model_state` (e.g. `{'batch_stats': ...}`) with every array of the same
    (renamed) name and shape copied from `config.init_from.checkpoint`'s model state;
    returns (model state, names loaded). Model state the checkpoint lacks stays fresh."""
    if not config or not config.get("checkpoint") or not model_state:
        return model_state, []
    format_name = config.get("format")
    if format_name in (None, "", "auto"):
        format_name = detect_format(config.checkpoint)
    if format_name in _FORMATS:  # a registered format: its own model-state reader, if any
        reader = _FORMATS[format_name].read_model_state
        if reader is None:
            return model_state, []
        try:
            restored = reader(pathlib.Path(config.checkpoint))
        except PretrainedInitError as error:
            described = describe_format(format_name)
            raise PretrainedInitError(f"{config.checkpoint} read as {described}: {error}") from None
    else:
        restored = load_params(config.checkpoint, "model_state")
    by_collection: dict[str, dict] = {}
    for name, value in restored.items():  # 'batch_stats/stem_bn/mean': rename after the
        collection, _, rest = name.partition("/")  # collection, as parameter names are
        by_collection.setdefault(collection, {})[rest] = value
    source = {
        f"{collection}/{name}": value
        for collection, arrays in by_collection.items()
        for name, value in _renamed(arrays, config.get("rename", ()) or ()).items()
    }
    fresh, loaded = flatten(model_state), []
    for name, value in fresh.items():
        if name in source and np.shape(source[name]) == np.shape(value):
            fresh[name] = np.asarray(source[name]).astype(np.asarray(value).dtype)
            loaded.append(name)
    return flax.traverse_util.unflatten_dict(fresh, sep="/"), loaded


def from_config(params, config: ml_collections.ConfigDict | None):
    """Applies `config.init_from` (keys: checkpoint, format, rename, reinit, posemb,
    allow_missing, allow_unused) to fresh `params`; returns (params, InitSummary or None
    if unset). Errors name the format the checkpoint was read as."""
    if not config or not config.get("checkpoint"):
        if config:
            check_keys(config, CONFIG_KEYS, "init_from")
        return params, None
    check_keys(config, CONFIG_KEYS, "init_from")
    settings = config.to_dict()
    path = settings.pop("checkpoint")
    shapes = {name: tuple(np.shape(value)) for name, value in flatten(params).items()}
    restored, described = read_pretrained(path, settings.pop("format", None), shapes)
    rename = settings.pop("rename", ())
    if any(isinstance(r, str) or len(r) != 2 for r in rename):
        raise ConfigError(f"init_from.rename must be ((regex, replacement), ...), got {rename!r}.")
    reinit = settings.pop("reinit", ())
    reinit = (reinit,) if isinstance(reinit, str) else tuple(reinit)
    try:
        return init_from(params, restored, rename=rename, reinit=reinit, **settings)
    except PretrainedInitError as error:
        raise PretrainedInitError(f"{path} read as {described}: {error}") from None
