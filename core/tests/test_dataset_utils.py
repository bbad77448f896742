"""Per-host example order, eval padding, sharding and prefetching."""

import jax
import numpy as np
import pytest

from scenic.dataset_lib import dataset_utils


def stream(step, process_index, process_count, batch=12, n=30, seed=3):
    indices, _ = dataset_utils.train_example_indices(
        step, num_examples=n, global_batch_size=batch, seed=seed,
        process_index=process_index, process_count=process_count,
    )
    return indices


def test_train_order_is_a_permutation_per_epoch_and_host_invariant():
    n, batch = 30, 12
    seen = np.concatenate([stream(s, 0, 1, batch, n) for s in range(5)])  # 60 = 2 epochs
    assert sorted(seen[:30]) == list(range(30)) and sorted(seen[30:]) == list(range(30))
    assert not np.array_equal(seen[:30], seen[30:])  # a fresh order each epoch
    for step in range(5):
        two_hosts = np.concatenate([stream(step, p, 2, batch, n) for p in range(2)])
        np.testing.assert_array_equal(two_hosts, stream(step, 0, 1, batch, n))


def test_batch_size_must_split_over_hosts():
    with pytest.raises(ValueError, match="divisible by the number of hosts"):
        dataset_utils.host_batch_size(10, 3)


@pytest.mark.parametrize("num_examples, hosts, batch", [(37, 2, 8), (5, 2, 4), (64, 1, 16)])
def test_eval_counts_every_example_once_across_hosts(num_examples, hosts, batch):
    ids = np.arange(num_examples)
    counts = np.zeros(num_examples, int)
    per_host_batches = []
    for host in range(hosts):
        part = dataset_utils.host_eval_slice(num_examples, host, hosts)
        n_batches = dataset_utils.num_eval_batches(num_examples, batch, hosts)
        batches = list(
            dataset_utils.padded_eval_batches({"id": ids[part.start : part.stop]}, batch, n_batches)
        )
        per_host_batches.append(len(batches))
        for b in batches:
            assert b["id"].shape == (batch,)
            np.add.at(counts, b["id"][b["batch_mask"] == 1], 1)
    assert len(set(per_host_batches)) == 1  # hosts stay in lockstep
    np.testing.assert_array_equal(counts, 1)


def test_per_example_uniform_is_deterministic_and_uniform():
    positions = np.arange(20000)
    u = dataset_utils.per_example_uniform(7, positions, salt=1)
    np.testing.assert_array_equal(u, dataset_utils.per_example_uniform(7, positions, salt=1))
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01
    assert not np.array_equal(u, dataset_utils.per_example_uniform(7, positions, salt=2))
    np.testing.assert_array_equal(
        u[100:200], dataset_utils.per_example_uniform(7, positions[100:200], salt=1)
    )


def test_shard_and_prefetch_to_device():
    n = jax.local_device_count()
    batches = [{"x": np.full((2 * n, 3), i, np.float32)} for i in range(4)]
    out = list(dataset_utils.prefetch_to_device(iter(batches), size=2))
    assert len(out) == 4
    for size in (0, 1, 9):  # 0: no batch ahead, not no batches
        assert len(list(dataset_utils.prefetch_to_device(iter(batches), size=size))) == 4
    for i, b in enumerate(out):
        assert b["x"].shape == (n, 2, 3)
        np.testing.assert_array_equal(np.asarray(b["x"]), i)
    with pytest.raises(ValueError, match="does not split"):
        dataset_utils.shard({"x": np.zeros((2 * n + 1, 1))}, 2 * n)
