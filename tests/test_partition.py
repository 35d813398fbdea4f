import numpy as np
import pytest
from fedprune.data import load_dataset, partition_indices, split_local


@pytest.fixture(scope="module")
def labels():
    return load_dataset("fashion-mnist").train.y


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "pathological"])
def test_partitions_cover_every_example_once(labels, kind):
    parts = partition_indices(labels, kind, 50, alpha=0.5, classes_per_client=2, seed=1)
    joined = np.concatenate(parts)
    assert len(parts) == 50
    assert len(joined) == len(np.unique(joined))
    if kind != "pathological":  # pathological may leave a class remainder unassigned
        assert len(joined) == len(labels)
    assert all(len(p) > 0 for p in parts)


def test_same_seed_same_partition_other_seed_differs(labels):
    a = partition_indices(labels, "dirichlet", 20, alpha=0.5, seed=3)
    b = partition_indices(labels, "dirichlet", 20, alpha=0.5, seed=3)
    c = partition_indices(labels, "dirichlet", 20, alpha=0.5, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def _mean_top_class_share(labels, parts):
    return float(np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]))


def test_dirichlet_skew_grows_as_alpha_shrinks(labels):
    shares = [_mean_top_class_share(labels, partition_indices(labels, "dirichlet", 30, alpha=a, seed=0))
              for a in (100.0, 1.0, 0.1)]
    assert shares[0] < shares[1] < shares[2]
    assert shares[0] < 0.2 and shares[2] > 0.5


def test_pathological_gives_each_client_its_class_count(labels):
    parts = partition_indices(labels, "pathological", 20, classes_per_client=2, seed=0)
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)


def test_min_partition_size_is_respected(labels):
    parts = partition_indices(labels, "dirichlet", 100, alpha=0.5, min_partition_size=150, seed=0)
    assert min(len(p) for p in parts) >= 150


def test_unsatisfiable_min_partition_size_names_the_options(labels):
    with pytest.raises(ValueError, match="min-partition-size"):
        partition_indices(labels[:2000], "dirichlet", 100, alpha=0.05, min_partition_size=19, seed=0)


def test_local_split_is_disjoint_and_seeded():
    idx = np.arange(100, 200)
    a, b = split_local(idx, 0.2, seed=5), split_local(idx, 0.2, seed=5)
    assert len(a.test) == 20 and len(a.train) == 80
    assert not set(a.train) & set(a.test)
    assert np.array_equal(a.test, b.test)
    assert set(a.train) | set(a.test) == set(idx)


def test_bad_partition_arguments_raise(labels):
    with pytest.raises(ValueError, match="unknown partition"):
        partition_indices(labels, "zipf", 10)
    with pytest.raises(ValueError, match="cannot split"):
        partition_indices(labels[:5], "iid", 10)
