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


def test_two_devices_match_one_device(tmp_path, cli, tiny_vit_digits):
    results = {}
    for devices in (1, 2):
        workdir = tmp_path / f"devices{devices}"
        run = cli(
            "train",
            "--config",
            "vit_digits",
            "--workdir",
            str(workdir),
            *tiny_vit_digits,
            devices=devices,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        results[devices] = (
            load_params(workdir, 6),
            json.loads((workdir / "final_metrics.json").read_text()),
        )
    one, two = results[1][0], results[2][0]
    moved = jax.tree.map(
        lambda a, b: float(np.max(np.abs(a - b))), one, load_params(tmp_path / "devices1", 3)
    )
    assert max(jax.tree.leaves(moved)) > 1e-3  # training did change the parameters

    def same(path, a, b):
        name = jax.tree_util.keystr(path)
        if "['key']['bias']" in name:
            # Softmax ignores a constant added to every logit of a query, so the key bias has
            # an exactly zero gradient: it moves only by rounding noise that Adam scales up,
            # and that noise differs with the device split (seen on AVX-512). Both stay ~0.
            assert max(np.abs(a).max(), np.abs(b).max()) < 1e-4, name
        else:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)

    jax.tree_util.tree_map_with_path(same, one, two)
    assert results[1][1]["accuracy"] == results[2][1]["accuracy"]


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
