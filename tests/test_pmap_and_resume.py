"""pmap is real (2 devices == 1 device at the same global batch) and resume is exact."""

import dataclasses
import json

import jax
import numpy as np
import orbax.checkpoint as ocp

from scenic.common_lib import config_utils, runner
from scenic.train_lib import trainer
from scenic_baselines.models import MODELS


def load_params(workdir, step):
    restored = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "default")
    return restored["params"]


def test_two_devices_match_one_device(reference_run, two_device_run):
    (one_dir, _, _), (two_dir, _, two_stderr) = reference_run, two_device_run
    assert "per device)" in two_stderr, two_stderr[-2000:]  # progress shown per device
    one, two = load_params(one_dir, 60), load_params(two_dir, 60)
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), one, load_params(one_dir, 30))
    assert max(jax.tree.leaves(moved)) > 1e-3  # training did change the parameters

    def same(path, a, b):
        name = jax.tree_util.keystr(path)
        if "['key']['bias']" in name:
            # Softmax ignores a constant added to every logit of a query, so the key bias has
            # an exactly zero gradient: it moves only by rounding noise that Adam scales up,
            # and that noise differs with the device split (seen on AVX-512; ~5e-4 after 60
            # steps). Both stay far below what 60 Adam steps at lr up to 3e-3 move a
            # parameter with a real gradient (~1e-1).
            assert max(np.abs(a).max(), np.abs(b).max()) < 3e-3, name
        else:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)

    jax.tree_util.tree_map_with_path(same, one, two)
    final_one, final_two = (
        json.loads((workdir / "final_metrics.json").read_text()) for workdir in (one_dir, two_dir)
    )
    assert final_one["accuracy"] == final_two["accuracy"]


def tiny_config(tiny_overrides):
    config = config_utils.load_config("vit_digits", "scenic_baselines.configs")
    config_utils.apply_overrides(config, [o.removeprefix("--config.") for o in tiny_overrides])
    return runner.resolve_config(config, MODELS)


def test_resume_after_stop_equals_uninterrupted_run(tmp_path, tiny_vit_digits):
    config, model_cls = tiny_config(tiny_vit_digits)
    dataset = runner.build_dataset(config)

    def train(**kwargs):
        result = trainer.train(**kwargs)
        return result.state, result.metrics

    full, _ = train(model_cls=model_cls, dataset=dataset, config=config, workdir=tmp_path / "a")
    stopped, _ = train(
        model_cls=model_cls,
        dataset=dataset,
        config=config,
        workdir=tmp_path / "b",
        stop_after_step=3,
    )
    assert int(stopped["step"]) == 3
    assert not (tmp_path / "b" / "final_metrics.json").exists()
    resumed, final = train(
        model_cls=model_cls, dataset=dataset, config=config, workdir=tmp_path / "b"
    )
    assert final["step"] == 6
    jax.tree.map(np.testing.assert_array_equal, full["params"], resumed["params"])
    jax.tree.map(np.testing.assert_array_equal, full["opt_state"], resumed["opt_state"])
    # A resume that restarted the data stream at step 0 would end elsewhere: the position in
    # the stream is part of what makes the resume exact.
    restarting = dataclasses.replace(
        dataset, train_batches=lambda start_step=0: dataset.train_batches(0)
    )
    train(
        model_cls=model_cls,
        dataset=dataset,
        config=config,
        workdir=tmp_path / "c",
        stop_after_step=3,
    )
    wrong, _ = train(model_cls=model_cls, dataset=restarting, config=config, workdir=tmp_path / "c")
    assert not np.array_equal(
        jax.tree.leaves(full["params"])[0], jax.tree.leaves(wrong["params"])[0]
    )
