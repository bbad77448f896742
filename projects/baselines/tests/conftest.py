"""Fixtures shared by scenic-baselines' tests."""

import importlib
import importlib.util
import pathlib
import sys
import types

import numpy as np
import pytest


def contrastive_loss_float64(image, text, scale):
    """float64 reference of CLIP's loss: the mean over both directions (image -> text, text
    -> image) of the cross-entropy of the diagonal, pair i = row i."""
    image, text = np.asarray(image, np.float64), np.asarray(text, np.float64)
    logits = scale * image @ text.T

    def cross_entropy(z):
        z = z - z.max(axis=1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -np.mean(np.diag(log_probs))

    return 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))


@pytest.fixture
def numpy_contrastive_loss():
    return contrastive_loss_float64


@pytest.fixture(scope="session")
def open_clip_folder() -> pathlib.Path:
    """The open_clip package folder of the open_clip_torch wheel, which the hatch
    environments install without its dependencies (pyproject.toml: its torchvision would
    break the CPU torch); located, never imported as `open_clip`."""
    spec = importlib.util.find_spec("open_clip")
    assert spec is not None, (
        "open_clip_torch is not installed in this environment; the hatch environments install "
        "it (python -m pip install --no-deps open_clip_torch==3.3.0)"
    )
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def open_clip_reference(open_clip_folder):
    """OpenCLIP's model code (`open_clip/model.py`: `CLIP`, `ModifiedResNet`, ...), the
    reference for CLIP's towers and OpenAI's weight layout, loaded as the package
    `open_clip_reference` so that open_clip's `__init__` (which imports torchvision) never
    runs. Its one torchvision import (a class named in `utils`, unused by these models) is
    served by a stand-in during the load only."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")  # imported first: it probes for torchvision itself
    package = types.ModuleType("open_clip_reference")
    package.__path__ = [str(open_clip_folder)]
    sys.modules[package.__name__] = package
    misc = types.ModuleType("torchvision.ops.misc")
    misc.FrozenBatchNorm2d = type("FrozenBatchNorm2d", (), {})
    stand_ins = {
        "torchvision": types.ModuleType("torchvision"),
        "torchvision.ops": types.ModuleType("torchvision.ops"),
        "torchvision.ops.misc": misc,
    }
    assert not set(stand_ins) & set(sys.modules), "torchvision is imported: no stand-in needed"
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module("open_clip_reference.model")
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)


def randomize_torch_weights(model, std: float, vector_std: float):
    """Every tensor of a PyTorch model random, in place: normal(0, std) matrices and
    normal(0, vector_std) vectors, norm scales in [0.5, 1.5], running variances in
    [0.5, 2] (a reference's own initialisation can hide parts: OpenCLIP zeroes each ResNet
    block's last norm scale). Returns the model."""
    import torch

    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif name.endswith("weight") and tensor.ndim <= 1:  # norm scales
                tensor.uniform_(0.5, 1.5)
            else:
                tensor.normal_(0.0, std if tensor.ndim > 1 else vector_std)
    return model


@pytest.fixture(scope="session")
def randomize_weights():
    return randomize_torch_weights
