"""Long-tailed (LDAM-DRW protocol) and labelled/unlabelled splits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gssl.data import DataError, labeled_unlabeled_split, long_tail_counts, long_tail_indices


def test_cifar10_exp_001_counts():
    assert long_tail_counts(5000, 10, 0.01) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(long_tail_counts(5000, 10, 0.01)) == 12406


def test_cifar100_exp_001_total():
    counts = long_tail_counts(500, 100, 0.01)
    assert sum(counts) == 10847 and counts[0] == 500 and counts[-1] == 5


def test_balanced_and_step():
    assert long_tail_counts(5000, 10, 1.0) == [5000] * 10
    assert long_tail_counts(5000, 10, 0.1, "step") == [5000] * 5 + [500] * 5
    assert long_tail_counts(10, 3, 0.5, "step") == [10, 5, 5]  # odd C: the extra class joins the tail
    assert long_tail_counts(7, 1, 0.01) == [7]


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, float("nan")])
def test_bad_ratio(bad):
    with pytest.raises(DataError, match=r"ratio must lie in \(0, 1\]"):
        long_tail_counts(100, 10, bad)


def test_bad_profile():
    with pytest.raises(DataError, match="unknown long-tail profile 'linear'"):
        long_tail_counts(100, 10, 0.1, "linear")


@settings(max_examples=60, deadline=None)
@given(n_max=st.integers(1, 6000), c=st.integers(2, 120), ratio=st.floats(0.001, 1.0))
def test_counts_properties(n_max, c, ratio):
    counts = long_tail_counts(n_max, c, ratio)
    assert len(counts) == c and counts[0] == n_max
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert counts[-1] == int(n_max * ratio) or abs(counts[-1] - n_max * ratio) < 1


def _ldam_reference(targets, imb_factor, imb_type="exp", rand_number=0):
    """LDAM-DRW's IMBALANCECIFAR10 (imbalance_cifar.py), transcribed, global numpy seed and all."""
    state = np.random.get_state()
    try:
        np.random.seed(rand_number)
        cls_num = len(np.unique(targets))
        img_max = len(targets) / cls_num
        img_num_per_cls = []
        if imb_type == "exp":
            for cls_idx in range(cls_num):
                img_num_per_cls.append(int(img_max * (imb_factor ** (cls_idx / (cls_num - 1.0)))))
        else:
            img_num_per_cls = [int(img_max)] * (cls_num // 2) + [int(img_max * imb_factor)] * (cls_num // 2)
        targets_np = np.array(targets, dtype=np.int64)
        selected = []
        for the_class, the_img_num in zip(np.unique(targets_np), img_num_per_cls):
            idx = np.where(targets_np == the_class)[0]
            np.random.shuffle(idx)
            selected.append(idx[:the_img_num])
        return np.concatenate(selected)
    finally:
        np.random.set_state(state)


@pytest.mark.parametrize("ratio,profile", [(0.01, "exp"), (0.02, "exp"), (0.1, "step"), (1.0, "exp")])
def test_indices_match_ldam_reference(ratio, profile):
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(10), 5000)
    rng.shuffle(labels)  # CIFAR's batches interleave classes
    idx = long_tail_indices(labels, ratio, profile, seed=0)
    np.testing.assert_array_equal(idx, _ldam_reference(labels, ratio, profile))
    assert idx.dtype == np.int64 and len(np.unique(idx)) == len(idx)
    assert np.bincount(labels[idx], minlength=10).tolist() == long_tail_counts(5000, 10, ratio, profile)


def test_class_grouped_copy_selects_the_same_images_as_the_interleaved_batches():
    """The JPEG copy lists each class's images in batch order but classes one after another; the pickles
    interleave them. The split reads each class's indices in order, so both select the same images."""
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(10), 500)
    rng.shuffle(labels)  # pickle layout: position i holds image i
    grouped = np.argsort(labels, kind="stable")  # JPEG layout: position j holds image grouped[j]
    from_pickles = long_tail_indices(labels, 0.01, seed=0)
    from_jpegs = grouped[long_tail_indices(labels[grouped], 0.01, seed=0)]
    np.testing.assert_array_equal(from_jpegs, from_pickles)


def test_indices_leave_global_numpy_state_alone():
    before = np.random.get_state()[1].copy()
    long_tail_indices(np.repeat(np.arange(10), 100), 0.1, seed=5)
    assert np.array_equal(before, np.random.get_state()[1])


def test_indices_seed_matters_and_cifar100_total():
    labels = np.repeat(np.arange(100), 500)
    a = long_tail_indices(labels, 0.01, seed=0)
    assert len(a) == 10847
    assert not np.array_equal(a, long_tail_indices(labels, 0.01, seed=1))


def test_indices_need_enough_images():
    labels = np.array([0] * 10 + [1] * 2)  # n_max = 6 but class 1 has 2
    with pytest.raises(
        DataError,
        match=r"class 1 has 2 images but the long-tail profile needs 6; long-tailed splits start from a "
        r"balanced training set\.$",
    ):
        long_tail_indices(labels, 1.0)


def test_counts_need_a_class_and_an_image_per_class():
    with pytest.raises(DataError, match=r"^need at least one class and one image per class, got 0 classes"):
        long_tail_counts(100, 0, 0.5)
    with pytest.raises(DataError, match=r"got 10 classes, n_max 0\.5\.$"):
        long_tail_counts(0.5, 10, 0.5)


def test_the_default_seed_is_ldam_drws_zero():
    labels = np.repeat(np.arange(10), 50)
    assert np.array_equal(long_tail_indices(labels, 0.1), long_tail_indices(labels, 0.1, seed=0))
    for a, b in zip(labeled_unlabeled_split(labels, 3), labeled_unlabeled_split(labels, 3, seed=0)):
        assert np.array_equal(a, b)


def test_labelled_split_at_its_edges_one_and_every_image_of_a_class():
    labels = np.repeat(np.arange(3), 4)
    lab, unl = labeled_unlabeled_split(labels, 1)
    assert np.bincount(labels[lab]).tolist() == [1, 1, 1] and len(unl) == 9
    lab, unl = labeled_unlabeled_split(labels, 4)  # every image labelled: allowed, nothing unlabelled
    assert sorted(lab.tolist()) == list(range(12)) and unl.tolist() == []
    with pytest.raises(DataError, match=r"^n_per_class must be at least 1, got 0\.$"):
        labeled_unlabeled_split(labels, 0)


def test_labeled_unlabeled_split():
    labels = np.repeat(np.arange(10), 50)
    np.random.default_rng(0).shuffle(labels)
    lab, unl = labeled_unlabeled_split(labels, 4, seed=0)
    assert lab.dtype == np.int64 and unl.dtype == np.int64
    assert len(lab) == 40 and len(unl) == 460
    assert np.bincount(labels[lab]).tolist() == [4] * 10
    assert not set(lab) & set(unl) and sorted(np.concatenate([lab, unl])) == list(range(500))
    assert np.all(np.diff(unl) > 0)
    lab2, unl2 = labeled_unlabeled_split(labels, 4, seed=0)
    assert np.array_equal(lab, lab2) and np.array_equal(unl, unl2)
    assert not np.array_equal(lab, labeled_unlabeled_split(labels, 4, seed=1)[0])
    with pytest.raises(DataError, match="fewer than the 51 labelled per class"):
        labeled_unlabeled_split(labels, 51)


def test_first_per_class_takes_the_first_n_of_each_class_in_order():
    from gssl.data import first_per_class

    labels = np.array([2, 0, 0, 1, 2, 0, 1, 2, 2])
    assert first_per_class(labels, 2).tolist() == [0, 1, 2, 3, 4, 6]
    assert first_per_class(labels, 10).tolist() == list(range(9))
