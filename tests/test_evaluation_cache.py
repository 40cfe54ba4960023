"""Corrupted test sets made once: the key covers every parameter, damaged entries are rebuilt, the pool
gives the same images as one process, and later models and runs reuse the sets."""
import logging

import numpy as np
import pytest
import torch
from torch import nn

from timm_asap_lab.evaluation import EvalImages, evaluate_corruptions, wrap_model
from timm_asap_lab.evaluation import cache as cache_mod
from timm_asap_lab.evaluation.cache import CorruptionCache, corruption_key, generate_corrupted, iter_corrupted_sets
from timm_asap_lab.evaluation.corruptions import corrupt, image_rng

pytest.importorskip('cv2')
pytest.importorskip('skimage')

JOBS = [('gaussian_noise', 1), ('contrast', 5), ('pixelate', 3)]


@pytest.fixture(scope='module')
def images():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(10, 1, 16, 16, generator=g) * 255).to(torch.uint8)
    return EvalImages(x, torch.arange(10) % 4, indices=list(range(100, 110)), name='noise')


def _reference(data: EvalImages, corruption: str, severity: int, seed: int) -> torch.Tensor:
    """Image by image, as :func:`corrupt` documents it."""
    out = [corrupt(img.permute(1, 2, 0).numpy(), corruption, severity, image_rng(seed, corruption, idx), 'cifar')
           for img, idx in zip(data.images, data.indices)]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def test_key_changes_with_every_parameter(images, monkeypatch):
    base = corruption_key(images, 'fog', 3, seed=0, protocol='cifar')
    changed_pixel = images.images.clone()
    changed_pixel[0, 0, 0, 0] ^= 1
    variants = [
        corruption_key(images, 'frost', 3, seed=0, protocol='cifar'),
        corruption_key(images, 'fog', 4, seed=0, protocol='cifar'),
        corruption_key(images, 'fog', 3, seed=1, protocol='cifar'),
        corruption_key(images, 'fog', 3, seed=0, protocol='imagenet'),
        corruption_key(EvalImages(changed_pixel, images.labels, images.indices), 'fog', 3, seed=0, protocol='cifar'),
        corruption_key(EvalImages(images.images, images.labels, list(range(10))), 'fog', 3, seed=0, protocol='cifar'),
        corruption_key(EvalImages(images.images[:9], images.labels[:9], images.indices[:9]), 'fog', 3, 0, 'cifar'),
    ]
    monkeypatch.setattr(cache_mod, 'corruption_code_version', lambda: 'other-code')
    variants.append(corruption_key(images, 'fog', 3, seed=0, protocol='cifar'))
    keys = [base['key']] + [v['key'] for v in variants]
    assert len(set(keys)) == len(keys)
    assert corruption_key(images, 'fog', 3, seed=0, protocol='auto')['protocol'] == 'cifar'  # 16 px: resolved


def test_pool_and_in_process_match_the_reference(images, monkeypatch):
    serial = dict(generate_corrupted(images, JOBS, seed=3, protocol='cifar', workers=0))
    monkeypatch.setattr(cache_mod, '_POOL_MIN_S', 0.0)  # use the pool even for this tiny workload
    monkeypatch.setattr(cache_mod, '_CHUNK', 4)  # several chunks per set, reassembled in order
    pooled = list(generate_corrupted(images, JOBS, seed=3, protocol='cifar', workers=2))
    assert [j for j, _ in pooled] == [0, 1, 2]
    for j, (c, s) in enumerate(JOBS):
        ref = _reference(images, c, s, seed=3)
        assert torch.equal(serial[j], ref) and torch.equal(dict(pooled)[j], ref)
        assert serial[j].dtype == torch.uint8 and serial[j].shape == images.images.shape


def test_cache_reused_and_damaged_entries_rebuilt(images, tmp_path, caplog):
    cache = CorruptionCache(tmp_path / 'cache')
    stats = {}
    first = dict(iter_corrupted_sets(images, JOBS, 0, 'cifar', cache, workers=0, stats=stats))
    assert stats == {'cached': 0, 'generated': 3}
    files = sorted((tmp_path / 'cache').iterdir())
    assert len(files) == 3 and all(f.suffix == '.safetensors' for f in files)  # no temporary files left
    again = dict(iter_corrupted_sets(images, JOBS, 0, 'cifar', cache, workers=0, stats=stats))
    assert stats == {'cached': 3, 'generated': 0}
    assert all(torch.equal(first[j], again[j]) for j in first)

    keys = [corruption_key(images, c, s, 0, 'cifar') for c, s in JOBS]
    truncated, flipped, foreign = (cache.path(k) for k in keys)
    truncated.write_bytes(truncated.read_bytes()[:40])
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0xFF  # one pixel of the stored tensor
    flipped.write_bytes(bytes(data))
    other = corruption_key(images, 'fog', 1, 0, 'cifar')  # a valid entry of other parameters under this name
    cache.save(other, first[2])
    cache.path(other).replace(foreign)
    with caplog.at_level(logging.WARNING, logger='timm_asap_lab.evaluation.cache'):
        rebuilt = dict(iter_corrupted_sets(images, JOBS, 0, 'cifar', cache, workers=0, stats=stats))
    assert stats == {'cached': 0, 'generated': 3}
    messages = ' '.join(r.getMessage() for r in caplog.records)
    for reason in ('cannot be read', 'do not match their checksum', 'other parameters'):
        assert reason in messages, messages
    assert all(torch.equal(first[j], rebuilt[j]) for j in first)
    assert all(cache.load(k) is not None for k in keys)  # rewritten, trusted again


class _Mean(nn.Module):
    """A model whose logits depend on the image brightness (enough to tell corrupted sets apart)."""

    def __init__(self, scale: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[scale, -scale, 0.5 * scale, 0.0]]))

    def forward(self, x):
        return x.mean(dim=(1, 2, 3)).unsqueeze(1) * self.w


def test_evaluate_corruptions_shares_sets_between_calls(images, tmp_path):
    models = [('a', wrap_model(_Mean(1.0), (0.5,), (0.25,)).eval()), ('b', wrap_model(_Mean(-2.0), (0.5,), (0.25,)).eval())]
    kw = dict(corruptions=[c for c, _ in JOBS], severities=[1, 3], seed=0, protocol='cifar', batch_size=4,
              progress=False, generate_workers=0, cache=str(tmp_path / 'cache'))
    s1, s2, s3 = {}, {}, {}
    rows_a = evaluate_corruptions(models[:1], images, stats=s1, **kw)
    rows_b = evaluate_corruptions(models[1:], images, stats=s2, **kw)
    rows_both = evaluate_corruptions(models, images, stats=s3, **{**kw, 'cache': None})
    assert s1['generated'] == 6 and s2 == {'cached': 6, 'generated': 0, 'make_s': s2['make_s']}
    assert s3['generated'] == 6  # no cache: made again
    assert rows_a + rows_b == [r for r in rows_both if r['model'] == 'a'] + [r for r in rows_both if r['model'] == 'b']
