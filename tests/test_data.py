"""Data: IDX files, Fashion-MNIST, folder/tar datasets, transforms, per-sample seeding, samplers, bad input."""
from __future__ import annotations

import gzip
import random
import tarfile

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import timm_asap.models  # noqa: F401  (registers the architectures)
from timm_asap_lab.config import apply_overrides
from timm_asap_lab.data import (
    DEFAULT_FASHION_MNIST_DIR, DataError, FashionMNIST, IdxError, ResumableSampler, SampleDataset, ShardSampler,
    create_val_dataset, create_run_data, create_split_dataset, create_transforms, dataset_classes,
    find_fashion_mnist, read_idx, run_data_config, subset_indices, write_idx)

from finetune_helpers import tiny_config, write_fake_fashion_mnist, write_image_folder


pytestmark = pytest.mark.usefixtures('one_thread')


# ----------------------------------------------------------------------------------------- IDX files
@pytest.mark.parametrize('dtype', [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize('suffix', ['', '.gz'])
def test_idx_roundtrip(tmp_path, dtype, suffix):
    arr = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
    path = write_idx(tmp_path / f'x-idx3-ubyte{suffix}', arr)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    if suffix:
        with gzip.open(path, 'rb') as f:
            assert f.read(4) == bytes([0, 0, {np.uint8: 8, np.int8: 9, np.int16: 11, np.int32: 12,
                                               np.float32: 13, np.float64: 14}[dtype], 3])


def test_idx_errors(tmp_path):
    bad_magic = tmp_path / 'bad'
    bad_magic.write_bytes(b'\x01\x02\x08\x01' + b'\x00' * 8)
    with pytest.raises(IdxError, match='not an IDX file'):
        read_idx(bad_magic)
    truncated = tmp_path / 'trunc'
    truncated.write_bytes(bytes([0, 0, 8, 2]) + (10).to_bytes(4, 'big') + (10).to_bytes(4, 'big') + b'\x00' * 50)
    with pytest.raises(IdxError, match=r'truncated.*needs 112 bytes, file has 62'):
        read_idx(truncated)
    unknown = tmp_path / 'unknown'
    unknown.write_bytes(bytes([0, 0, 0x42, 1]) + (1).to_bytes(4, 'big') + b'\x00')
    with pytest.raises(IdxError, match='unknown IDX type code 0x42'):
        read_idx(unknown)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / 'missing.gz')
    with pytest.raises(IdxError, match='has no IDX type'):
        write_idx(tmp_path / 'u64', np.zeros(3, dtype=np.uint64))


# ----------------------------------------------------------------------------------------- Fashion-MNIST
@pytest.mark.parametrize('layout,gz', [('flat', True), ('flat', False), ('torchvision', True)])
def test_fashion_mnist_layouts(tmp_path, layout, gz):
    write_fake_fashion_mnist(tmp_path, n_train=20, n_test=10, gz=gz, layout=layout)
    assert find_fashion_mnist(tmp_path, 'train') is not None
    train = FashionMNIST(tmp_path, 'train', download=False)
    test = FashionMNIST(tmp_path, 'validation', download=False)  # validation/test/t10k are the test split
    assert len(train) == 20 and len(test) == 10
    img, label = train[3]
    assert isinstance(img, Image.Image) and img.mode == 'L' and img.size == (28, 28)
    assert 0 <= label < 10 and label == int(train.targets[3])
    rgb, _ = FashionMNIST(tmp_path, 'train', in_chans=3, download=False)[3]
    assert rgb.mode == 'RGB'
    a = np.asarray(rgb)
    np.testing.assert_array_equal(a[..., 0], np.asarray(img))
    np.testing.assert_array_equal(a[..., 0], a[..., 2])


def test_fashion_mnist_errors(tmp_path):
    with pytest.raises(DataError, match=r"files not found.*dataset-fashion-mnist"):
        FashionMNIST(tmp_path / 'nowhere', 'train', download=False)
    with pytest.raises(DataError, match="no split 'holdout'"):
        FashionMNIST(tmp_path, 'holdout', download=False)
    with pytest.raises(DataError, match='1 or 3 channels'):
        FashionMNIST(tmp_path, 'train', in_chans=2, download=False)
    write_idx(tmp_path / 'train-images-idx3-ubyte.gz', np.zeros((5, 28, 28), np.uint8))
    write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', np.zeros(4, np.uint8))
    with pytest.raises(DataError, match='expected 5 labels'):
        FashionMNIST(tmp_path, 'train', download=False)
    write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', np.full(5, 12, np.uint8))
    with pytest.raises(DataError, match=r'labels must be in 0\.\.9, found 12'):
        FashionMNIST(tmp_path, 'train', download=False)
    (tmp_path / 'train-images-idx3-ubyte.gz').write_bytes(b'not gzip at all')
    with pytest.raises(DataError, match='unreadable'):
        FashionMNIST(tmp_path, 'train', download=False)


@pytest.mark.skipif(find_fashion_mnist(DEFAULT_FASHION_MNIST_DIR, 'test') is None,
                    reason='Debian dataset-fashion-mnist not installed')
def test_fashion_mnist_debian_default():
    ds = FashionMNIST(None, 'test', download=False)
    assert len(ds) == 10000 and ds.images.shape == (10000, 28, 28)
    assert np.bincount(ds.targets, minlength=10).tolist() == [1000] * 10


def test_fashion_mnist_transform_32px(tmp_path):
    """Grey 28x28 -> the model's 1 or 3 channels at 32x32, whole image resized (crop_pct 1.0)."""
    write_fake_fashion_mnist(tmp_path, n_train=16, n_test=8)
    for chans in (1, 3):
        cfg = tiny_config(tmp_path, model={'in_chans': chans, 'img_size': 32}, data={'mean': None, 'std': None})
        model = timm.create_model('resnet18_cifar_asap', num_classes=10, in_chans=chans)
        dc = run_data_config(cfg, model)
        assert dc['input_size'] == (chans, 32, 32) and dc['crop_pct'] == 1.0
        assert len(dc['mean']) == chans and len(dc['std']) == chans  # CIFAR RGB stats averaged for grey
        ds = create_val_dataset(cfg, model)
        x, y, bad = ds[0]
        assert x.shape == (chans, 32, 32) and x.dtype == torch.float32 and bad == 0
        if chans == 3:
            # the grey value is repeated: channels differ only through the per-channel normalisation
            raw = x * torch.tensor(dc['std']).view(3, 1, 1) + torch.tensor(dc['mean']).view(3, 1, 1)
            torch.testing.assert_close(raw[0], raw[2], atol=1e-5, rtol=0)
    with pytest.raises(DataError, match='data.mean has 2 values but the model takes 3 channels'):
        run_data_config(tiny_config(tmp_path, model={'in_chans': 3}, data={'mean': [0.1, 0.2]}))


# ----------------------------------------------------------------------------------------- per-sample seeding
def test_sample_dataset_is_seeded_per_epoch_and_index(tmp_path):
    write_fake_fashion_mnist(tmp_path, n_train=16, n_test=8)
    cfg = tiny_config(tmp_path, data={'scale': [0.3, 1.0], 'hflip': 0.5, 'reprob': 0.5})
    dc = run_data_config(cfg)
    ds = SampleDataset(FashionMNIST(tmp_path, 'train', download=False), create_transforms(cfg, dc, True), seed=3,
                       in_chans=1)
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    a = ds[(0, 5)][0]
    assert torch.equal(a, ds[(0, 5)][0])  # same epoch and index: same augmentation
    assert any(not torch.equal(a, ds[(e, 5)][0]) for e in range(1, 4))  # other epochs: other augmentations
    # the global random state is untouched (a resumed run continues it exactly)
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])


# ----------------------------------------------------------------------------------------- samplers
def test_resumable_sampler_skips_and_shards():
    data = list(range(21))
    full = list(ResumableSampler(data, seed=1).__iter__())
    s = ResumableSampler(data, seed=1)
    s.set_epoch(0, start=8)
    assert list(s) == full[8:] and len(s) == 13
    s.set_epoch(1)
    other = list(s)
    assert sorted(i for _, i in other) == data and [i for _, i in other] != [i for _, i in full]
    assert all(e == 1 for e, _ in other)
    shards = []
    for rank in range(2):
        r = ResumableSampler(data, num_replicas=2, rank=rank, seed=1)
        r.set_epoch(0)
        shards.append([i for _, i in r])
    assert len(shards[0]) == len(shards[1]) == 11
    assert set(shards[0]) | set(shards[1]) == set(data)
    ev = [list(ShardSampler(data, 3, r)) for r in range(3)]
    assert sorted(sum(ev, [])) == data and [len(ShardSampler(data, 3, r)) for r in range(3)] == [7, 7, 7]
    with pytest.raises(ValueError, match='start must be in'):
        s.set_epoch(0, start=99)


def test_subset_indices_fixed_and_spread():
    a = subset_indices(1000, 50)
    assert a == subset_indices(1000, 50) and a == sorted(a) and len(set(a)) == 50
    assert max(a) > 500  # a random subset, not the first 50
    assert subset_indices(10, None) is None and subset_indices(10, 20) is None


# ----------------------------------------------------------------------------------------- folders, tars, bad input
def test_image_folder_and_tar_splits(tmp_path):
    root = write_image_folder(tmp_path / 'folder', ['cat', 'dog', 'eel'], per_class=3)
    cfg = tiny_config(root, model={'num_classes': 3}, data={'dataset': '', 'val_split': 'validation'})
    ds = create_split_dataset(cfg.data, 'train', in_chans=1)
    assert len(ds) == 9 and dataset_classes(ds) == ['cat', 'dog', 'eel']
    # synonyms: 'val' finds the 'validation' folder
    assert len(create_split_dataset(cfg.data, 'val', in_chans=1)) == 9
    # one tar per split, and a folder of tar shards (one per class)
    tars = tmp_path / 'tars'
    (tars / 'train').mkdir(parents=True)
    with tarfile.open(tars / 'validation.tar', 'w') as tf:
        tf.add(root / 'validation', arcname='.')
    for c in ('cat', 'dog', 'eel'):
        with tarfile.open(tars / 'train' / f'{c}.tar', 'w') as tf:
            tf.add(root / 'train' / c, arcname=c)
    tcfg = apply_overrides(cfg, [f'data.data_dir={tars}'])
    train, val = (create_split_dataset(tcfg.data, s, in_chans=1) for s in ('train', 'validation'))
    assert len(train) == 9 and len(val) == 9
    assert dataset_classes(train) == ['cat', 'dog', 'eel'] == dataset_classes(val)
    model = timm.create_model('resnet18_cifar_asap', num_classes=3, in_chans=1, **cfg.model.model_args)
    rd = create_run_data(tcfg, model)
    x, y, bad = next(iter(rd.val_loader))
    assert x.shape == (8, 1, 16, 16) and bad.sum() == 0


def test_folder_errors_name_the_problem(tmp_path):
    cfg = tiny_config(tmp_path / 'missing', model={'num_classes': 3}, data={'dataset': '', 'val_split': 'validation'})
    with pytest.raises(DataError, match='does not exist'):
        create_run_data(cfg)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DataError, match='is empty'):
        create_run_data(apply_overrides(cfg, [f"data.data_dir={tmp_path / 'empty'}"]))
    with pytest.raises(DataError, match='data.data_dir: required'):
        create_run_data(apply_overrides(cfg, ['data.data_dir=null']))
    root = write_image_folder(tmp_path / 'f', ['a', 'b', 'c'], per_class=3, splits=('train',))
    with pytest.raises(DataError, match=r"no folder or \.tar for split 'validation'"):
        create_run_data(apply_overrides(cfg, [f'data.data_dir={root}']))
    # class count against the model
    write_image_folder(root, ['a', 'b', 'c'], per_class=3, splits=('validation',))
    with pytest.raises(DataError, match=r"has 3 classes \['a', 'b', 'c'\], but model.num_classes is 10"):
        create_run_data(apply_overrides(cfg, [f'data.data_dir={root}', 'model.num_classes=10']))
    # train and validation with different classes would silently shift labels
    write_image_folder(tmp_path / 'g', ['a', 'b', 'c'], per_class=3, splits=('train',))
    write_image_folder(tmp_path / 'g', ['a', 'b', 'd'], per_class=3, splits=('validation',))
    with pytest.raises(DataError, match='different classes'):
        create_run_data(apply_overrides(cfg, [f"data.data_dir={tmp_path / 'g'}"]))
    # fewer images per process than one batch
    with pytest.raises(DataError, match='fewer than train.batch_size=64'):
        create_run_data(apply_overrides(cfg, [f'data.data_dir={root}', 'train.batch_size=64']))


def test_unreadable_images_are_replaced_and_counted(tmp_path):
    root = write_image_folder(tmp_path, ['a', 'b'], per_class=4, splits=('train',))
    (root / 'train' / 'a' / '0001.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    (root / 'train' / 'b' / '0005.png').write_bytes(b'')
    cfg = tiny_config(root, model={'num_classes': 2}, data={'dataset': ''})
    ds = create_split_dataset(cfg.data, 'train', in_chans=1)
    sd = SampleDataset(ds, create_transforms(cfg, run_data_config(cfg), False), in_chans=1)
    counts = [sd[i][2] for i in range(len(sd))]
    assert sum(counts) == 2 and counts[1] == 1 and counts[5] == 1
    assert torch.equal(sd[1][0], sd[2][0])  # replaced by the next readable image


def test_torchvision_dataset_through_timm(tmp_path):
    """A name timm maps to torchvision (``torch/image_folder``) goes through the generic loading path."""
    root = write_image_folder(tmp_path, ['a', 'b', 'c'], per_class=2)
    cfg = tiny_config(root, model={'num_classes': 3}, data={'dataset': 'torch/image_folder'})
    ds = create_split_dataset(cfg.data, 'train', in_chans=1)
    assert len(ds) == 6 and dataset_classes(ds) == ['a', 'b', 'c']
    sd = SampleDataset(ds, create_transforms(cfg, run_data_config(cfg), True), in_chans=1)
    x, y, bad = sd[(0, 3)]
    assert x.shape == (1, 16, 16) and y == 1 and bad == 0


# ----------------------------------------------------------------------------------------- in-memory loader
def test_memory_sample_order_is_the_distributed_samplers():
    from torch.utils.data import DistributedSampler
    from timm_asap_lab.data import sample_order
    for n, world in ((10, 1), (10, 3), (7, 4)):
        for rank in range(world):
            ref = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=5)
            ref.set_epoch(3)
            assert sample_order(n, 3, 5, rank, world).tolist() == list(ref)


def _uint8(n=4, c=1, size=12, seed=0):
    return torch.randint(0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_memory_augment_identity_flip_and_shift():
    from timm_asap_lab.data import MemoryAugment, augment_batch
    x = _uint8(c=3)
    g = torch.Generator().manual_seed(0)
    same = augment_batch(x, MemoryAugment(12, (1, 1), (1, 1), hflip=0.0), g)
    torch.testing.assert_close(same, x.float(), atol=1e-3, rtol=0)
    flipped = augment_batch(x, MemoryAugment(12, (1, 1), (1, 1), hflip=1.0), g)
    torch.testing.assert_close(flipped, x.float().flip(-1), atol=1e-3, rtol=0)
    assert torch.equal(augment_batch(x, MemoryAugment(12, enabled=False), g), x.float())
    # a shift of up to 2 pixels with zero fill: each image is its input moved by whole pixels
    shifted = augment_batch(x, MemoryAugment(12, (1, 1), (1, 1), hflip=0.0, padding=2), g)
    padded = torch.nn.functional.pad(x.float(), (2, 2, 2, 2))
    for i in range(len(x)):
        crops = [padded[i, :, dy:dy + 12, dx:dx + 12] for dy in range(5) for dx in range(5)]
        assert min(float((shifted[i] - c).abs().max()) for c in crops) < 1e-3


def test_memory_augment_crops_follow_scale_and_ratio():
    from timm_asap_lab.data.memory import MemoryAugment, _crop_boxes
    g = torch.Generator().manual_seed(1)
    w, h = _crop_boxes(4000, MemoryAugment(32, (0.25, 0.5), (0.5, 2.0)), g, 'cpu')
    area, ratio = w * h, w / h
    assert float(area.min()) >= 0.25 - 1e-6 and float(area.max()) <= 0.5 + 1e-6
    assert float(ratio.min()) >= 0.5 - 1e-6 and float(ratio.max()) <= 2.0 + 1e-6 and float((w <= 1).all()) == 1


def test_memory_batches_resume_part_way_and_normalise(tmp_path, device):
    from timm_asap_lab.data import MemoryAugment, MemoryEvalBatches, MemoryTrainBatches
    x, y = _uint8(n=20, size=8).to(device), (torch.arange(20) % 10).to(device)
    batches = MemoryTrainBatches(x, y, 4, MemoryAugment(8, (0.5, 1.0), padding=2), [0.5], [0.25], seed=3)
    whole = list(batches.epoch(2))
    tail = list(batches.epoch(2, start=3))
    assert len(batches) == 5 and len(tail) == 2
    assert whole[0][0].device.type == device and whole[0][0].shape == (4, 1, 8, 8)
    for (xa, ya), (xb, yb) in zip(whole[3:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(whole[0][0], next(iter(batches.epoch(3)))[0])  # another epoch, other draws
    val = MemoryEvalBatches(x, y, 8, 16, [0.5], [0.25], 'bilinear', rank=1, world_size=2)
    xs, ys = zip(*val)
    assert torch.equal(torch.cat(ys), y[1::2]) and xs[0].shape == (8, 1, 16, 16)
    ref = torch.nn.functional.interpolate(x[1::2].float(), size=(16, 16), mode='bilinear', antialias=True)
    torch.testing.assert_close(torch.cat(xs), (ref.round() / 255 - 0.5) / 0.25)


def test_auto_loader_takes_memory_for_fashion_mnist(tmp_path, device):
    data = write_fake_fashion_mnist(tmp_path / 'f', n_train=40, n_test=12)
    cfg = tiny_config(data, data={'train_subset': 32})
    rd = create_run_data(cfg, device=device)
    assert rd.loader == 'memory' and rd.train_size == 32 and rd.val_size == 12 and len(rd.train_batches) == 4
    x, y = next(rd.train_batches.epoch(0))
    assert x.shape == (8, 1, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.device.type == y.device.type == device
    ref = create_run_data(apply_overrides(cfg, ['data.loader=dataloader']))
    assert ref.loader == 'dataloader' and ref.train_size == 32 and len(ref.train_batches) == 4
    # the same validation images, resized the same way up to interpolation details
    xm = torch.cat([b[0] for b in rd.val_loader])
    xd = torch.cat([b[0] for b in ref.val_loader])
    assert xm.device.type == device
    xm = xm.cpu()
    assert xm.shape == xd.shape and float((xm - xd).abs().mean()) < 0.05
