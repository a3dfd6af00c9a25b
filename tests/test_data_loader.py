"""Batched crop/flip/normalise and the device loader: correctness and seed determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gssl.data import DeviceLoader, crop_at, epoch_seed, flip_where, normalize, random_crop, random_hflip


def _ref_crop(x: np.ndarray, p: int, top: int, left: int) -> np.ndarray:
    """torchvision semantics: zero-pad by p, take the H x W window at (top, left)."""
    c, h, w = x.shape
    padded = np.zeros((c, h + 2 * p, w + 2 * p), x.dtype)
    padded[:, p : p + h, p : p + w] = x
    return padded[:, top : top + h, left : left + w]


def test_crop_of_known_image_lands_where_it_should():
    x = torch.arange(1, 17, dtype=torch.uint8).view(1, 1, 4, 4)  # values 1..16, no zeros
    # offset (0, 0): the image moves p down and p right, zeros fill the top rows / left columns
    out = crop_at(x, 2, torch.tensor([[0, 0]]))[0, 0]
    assert out.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 2], [0, 0, 5, 6]]
    assert torch.equal(crop_at(x, 2, torch.tensor([[2, 2]])), x)  # centre: identity
    out = crop_at(x, 2, torch.tensor([[4, 3]]))[0, 0]  # 2 up, 1 left
    assert out.tolist() == [[10, 11, 12, 0], [14, 15, 16, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize(
    "shape,p", [((5, 3, 32, 32), 4), ((4, 1, 28, 28), 2), ((3, 3, 64, 64), 4), ((2, 3, 5, 7), 3)]
)
def test_crop_matches_reference_for_every_offset(shape, p):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    for top in range(2 * p + 1):
        for left in (0, p, 2 * p):
            offsets = torch.tensor([[top, left]] * shape[0])
            got = crop_at(x, p, offsets).numpy()
            for b in range(shape[0]):
                np.testing.assert_array_equal(got[b], _ref_crop(x[b].numpy(), p, top, left))


def test_crop_any_dtype_and_per_sample_offsets():
    x = torch.randn(3, 2, 6, 6)
    offsets = torch.tensor([[0, 1], [2, 2], [4, 0]])
    got = crop_at(x, 2, offsets)
    for b in range(3):
        np.testing.assert_array_equal(got[b].numpy(), _ref_crop(x[b].numpy(), 2, *offsets[b].tolist()))


def test_random_crop_is_seeded_and_covers_all_offsets():
    x = torch.randint(1, 256, (400, 1, 8, 8), dtype=torch.uint8)
    a = random_crop(x, 2, torch.Generator().manual_seed(7))
    b = random_crop(x, 2, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == torch.uint8
    # the same draws, replayed: random_crop is crop_at at uniform offsets, and all 25 occur
    g = torch.Generator().manual_seed(7)
    offsets = torch.randint(0, 5, (400, 2), generator=g)
    assert torch.equal(a, crop_at(x, 2, offsets))
    assert len({tuple(o) for o in offsets.tolist()}) == 25
    assert torch.equal(random_crop(x, 0, g), x)


def test_flip_is_its_own_inverse():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    once = random_hflip(x, torch.Generator().manual_seed(3))
    twice = random_hflip(once, torch.Generator().manual_seed(3))  # same draws -> same samples flipped back
    assert torch.equal(twice, x)
    mask = torch.rand(16, generator=torch.Generator().manual_seed(3)) < 0.5
    assert 0 < mask.sum() < 16
    assert torch.equal(once[mask], x[mask].flip(3)) and torch.equal(once[~mask], x[~mask])
    assert torch.equal(flip_where(flip_where(x, mask), mask), x)
    assert once[mask][0, 0, 0, 0] == x[mask][0, 0, 0, -1]  # flips along W (horizontal)


def test_normalize():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.equal(out, ref)  # the same float ops as ToTensor + Normalize
    with pytest.raises(ValueError, match="mean/std"):
        normalize(x, (0.5,), (0.5,))


def _data(n=50, c=3, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8, generator=g), torch.arange(n) % 10


def _epoch(loader):
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("c,s", [(1, 28), (3, 32), (3, 64)])
def test_loader_shapes_and_every_sample_once(c, s):
    x, y = _data(50, c, s)
    loader = DeviceLoader(x, y, 16, mean=(0.5,) * c, std=(0.25,) * c, seed=1)
    assert len(loader) == 4 and loader.num_samples == 50
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [16, 16, 16, 2]  # last partial batch kept
    xb, yb = batches[0]
    assert xb.shape == (16, c, s, s) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    _, labels = _epoch(loader)
    assert sorted(labels.tolist()) == sorted(y.tolist())
    dl = DeviceLoader(x, y, 16, mean=(0.5,) * c, std=(0.25,) * c, drop_last=True)
    assert len(dl) == 3 and [len(b[1]) for b in dl] == [16, 16, 16]


def test_loader_batches_are_augmented_views_of_the_right_images():
    x, y = _data(20)
    y = torch.arange(20)  # label = index, so each output can be traced back to its source
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    loader = DeviceLoader(x, y, 8, mean=mean, std=std, seed=4, crop_padding=4)
    all_offsets = torch.cartesian_prod(torch.arange(9), torch.arange(9))  # 81 x 2
    for xb, yb in loader:
        raw = torch.round(
            (xb * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)) * 255
        )
        crops = crop_at(x[yb].repeat_interleave(81, 0), 4, all_offsets.repeat(len(yb), 1))
        crops = torch.cat([crops, crops.flip(3)]).view(2, len(yb), 81, 3, 32, 32).transpose(0, 1)
        match = (crops.float() == raw[:, None, None]).flatten(3).all(3)  # sample x flip x offset
        assert bool(match.flatten(1).any(1).all()), "every output is a crop (+ flip) of its own source"


def test_eval_loader_is_plain_normalised_data_in_order():
    x, y = _data(30)
    loader = DeviceLoader(
        x, y, 7, mean=(0.5,) * 3, std=(0.5,) * 3, crop_padding=0, hflip=False, shuffle=False
    )
    xs, ys = _epoch(loader)
    assert torch.equal(ys, y) and torch.equal(xs, normalize(x, (0.5,) * 3, (0.5,) * 3))
    assert torch.equal(_epoch(loader)[0], xs)


def test_loader_determinism_and_resume():
    x, y = _data(64)
    kw = dict(mean=(0.5,) * 3, std=(0.5,) * 3, seed=11)
    run = DeviceLoader(x, y, 10, **kw)
    epochs = [_epoch(run) for _ in range(3)]  # epochs 0, 1, 2 in turn
    assert not torch.equal(epochs[0][1], epochs[1][1])  # a new permutation each epoch
    again = DeviceLoader(x, y, 10, **kw)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epochs, (_epoch(again) for _ in range(3))))
    resumed = DeviceLoader(x, y, 10, **kw)
    resumed.set_epoch(2)  # a run restarted at epoch 2 replays it bit-for-bit
    xs, ys = _epoch(resumed)
    assert torch.equal(xs, epochs[2][0]) and torch.equal(ys, epochs[2][1])
    resumed.set_epoch(1)
    assert torch.equal(_epoch(resumed)[0], epochs[1][0])
    other = DeviceLoader(x, y, 10, **{**kw, "seed": 12})
    assert not torch.equal(_epoch(other)[0], epochs[0][0])
    # the batch size changes neither the permutation nor any sample's crop and flip
    xs64, ys64 = _epoch(DeviceLoader(x, y, 64, **kw))
    assert torch.equal(ys64, epochs[0][1]) and torch.equal(xs64, epochs[0][0])


def test_epoch_seed_mixes():
    seeds = {epoch_seed(s, e) for s in range(5) for e in range(50)}
    assert len(seeds) == 250 and all(0 <= v < 2**63 for v in seeds)
    # pinned: a change of the mixing would silently change every run's sample order and augmentations
    assert epoch_seed(0, 3) == 426229271328196471 and epoch_seed(7, 0) == 4474668370826950401
    assert epoch_seed(-1, 0) != epoch_seed(1, 0)


def test_loader_accepts_numpy_and_validates():
    x, y = _data(10)
    loader = DeviceLoader(x.numpy(), y.numpy(), 4, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert len(list(loader)) == 3
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(x.float(), y, 4, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(ValueError, match="one per channel"):
        DeviceLoader(x, y, 4, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="labels"):
        DeviceLoader(x, y[:5], 4, mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    x, y = _data(100)
    kw = dict(mean=(0.5,) * 3, std=(0.5,) * 3, seed=5)
    cpu = _epoch(DeviceLoader(x, y, 32, **kw))
    gpu = _epoch(DeviceLoader(x, y, 32, device="cuda", **kw))
    assert gpu[0].device.type == "cuda"
    assert torch.equal(cpu[1], gpu[1].cpu())  # same permutation
    assert torch.allclose(cpu[0], gpu[0].cpu(), atol=1e-6)  # same crops and flips


def test_cpu_threads_limited_only_while_assembling_and_results_unchanged():
    x, y = _data(40)
    kw = dict(mean=(0.5,) * 3, std=(0.5,) * 3, seed=2)
    before = torch.get_num_threads()
    seen = []
    for _ in DeviceLoader(x, y, 16, cpu_threads=1, **kw):
        seen.append(torch.get_num_threads())  # the consumer always sees its own setting
    assert seen == [before] * 3 and torch.get_num_threads() == before
    assert torch.equal(
        _epoch(DeviceLoader(x, y, 16, cpu_threads=1, **kw))[0],
        _epoch(DeviceLoader(x, y, 16, cpu_threads=None, **kw))[0],
    )


def test_a_partial_batch_is_shared_among_ranks_as_tensor_split_shares_it():
    """shard(i): the global batch's size and where this rank's slice starts; the last, partial batch
    is split as torch.tensor_split splits it (now in integer arithmetic: no tensor read per epoch)."""
    from types import SimpleNamespace

    for n in range(1, 23):
        for world in (1, 2, 3, 4):
            for rank in range(world):
                loader = SimpleNamespace(num_samples=n, batch_size=4, world=world, rank=rank)
                full, last = divmod(n, 4 * world)
                for i in range(full + (last > 0)):
                    size, start = DeviceLoader.shard(loader, i)
                    assert size == min(4 * world, n - i * 4 * world)
                    chunk = torch.tensor_split(torch.arange(size), world)[rank]
                    assert start == (int(chunk[0]) if len(chunk) else 0)
