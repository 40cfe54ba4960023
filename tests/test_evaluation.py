"""Robustness evaluation library: corruptions, attacks, shift consistency, aliasing view, summaries, reports."""
import copy
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from timm_asap_lab.evaluation import (
    ALEXNET_ERR, ALL_CORRUPTIONS, CORRUPTIONS, EXTRA_CORRUPTIONS, AttackSpec, EvalImages, EvalOptions, aliasing_view,
    build_attack_specs, check_corruptions, check_eps, check_severities, corrupt, corruption_summary, evaluate_attacks,
    evaluate_clean, evaluate_corruptions, evaluate_models, evaluate_shift_consistency, load_images, markdown_report,
    parse_eps, parse_markdown_tables, read_results, run_attack, wrap_model, write_results)
from timm_asap_lab.evaluation.corruptions import _motion_blur
from timm_asap_lab.evaluation.shift import shift_images
from timm_asap_lab.runtime import resolve_amp

pytest.importorskip('art')
pytest.importorskip('cv2')
pytest.importorskip('skimage')

NUM_CLASSES = 4
SIZE = 32


def make_images(n: int, seed: int, size: int = SIZE):
    """Four classes of noisy gratings: horizontal/vertical, low/high frequency, random phase."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing='ij')
    images = []
    for lab in labels.tolist():
        freq = 2 + 2 * (lab // 2)
        coord = xx if lab % 2 == 0 else yy
        phase = float(torch.rand(1, generator=g)) * 2 * math.pi
        img = 0.5 + 0.35 * torch.sin(2 * math.pi * coord * freq / size + phase)
        img = (img + 0.05 * torch.randn(size, size, generator=g)).clamp(0, 1)
        images.append(img.expand(3, -1, -1))
    return torch.stack(images), labels


class TinyNet(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, NUM_CLASSES))


@pytest.fixture(scope='module')
def trained():
    """A tiny CNN trained for a fraction of a second to ~100 % on the grating task, wrapped for [0, 1] input."""
    torch.manual_seed(0)
    x, y = make_images(512, seed=0)
    model = wrap_model(TinyNet(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).train()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(15):
        for i in range(0, len(x), 64):
            loss = nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope='module')
def test_images():
    x, y = make_images(48, seed=1)
    return EvalImages(x.mul(255).round().to(torch.uint8), y, name='gratings')


def natural_image(size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    import scipy.ndimage as ndi
    img = ndi.gaussian_filter(rng.random((size, size, 3)) * 255, (1.5, 1.5, 0))
    return np.clip((img - img.mean()) * 3 + 128, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- corruptions

@pytest.mark.parametrize('name', ALL_CORRUPTIONS)
def test_corruption_changes_image_keeps_shape_dtype_range(name):
    for protocol, size in (('cifar', 32), ('imagenet', 48)):
        x = natural_image(size, seed=3)
        for severity in (1, 5):
            y = corrupt(x, name, severity, rng=7, protocol=protocol)
            assert y.shape == x.shape and y.dtype == np.uint8
            assert 0 <= y.min() and y.max() <= 255
            assert not np.array_equal(y, x), f"{name} s{severity} ({protocol}) left the image unchanged"
    grey = natural_image(32, seed=4)[..., :1]
    y = corrupt(grey, name, 3, rng=1, protocol='cifar')
    assert y.shape == grey.shape and y.dtype == np.uint8
    if name == 'saturate':  # a grey image has no saturation to change
        np.testing.assert_allclose(y.astype(int), grey.astype(int), atol=1)
    else:
        assert not np.array_equal(y, grey)


# The benchmark's own parameter tables are not monotone in pixel change for these (CIFAR-10-C tables):
# glass_blur (sigma and iterations alternate), frost (image/texture weights trade off), elastic_transform
# (severity trades displacement size for smoothness), spatter (water drops at 1-3, mud at 4-5),
# saturate (desaturates at 1-2, oversaturates at 3-5).
NOT_MONOTONE = {'glass_blur', 'frost', 'elastic_transform', 'spatter', 'saturate'}


def test_severities_monotone_in_mean_pixel_change():
    images = [natural_image(32, seed=s) for s in range(4)]
    for name in ALL_CORRUPTIONS:
        change = []
        for severity in range(1, 6):
            change.append(np.mean([np.abs(corrupt(x, name, severity, rng=100 + i, protocol='cifar').astype(float)
                                          - x).mean() for i, x in enumerate(images)]))
        assert change[-1] > 0
        if name not in NOT_MONOTONE:
            assert all(b >= a for a, b in zip(change, change[1:])), f"{name}: {np.round(change, 2)}"


def test_corruptions_are_seeded_and_share_draws_across_severities():
    x = natural_image(32)
    a = corrupt(x, 'gaussian_noise', 2, rng=5, protocol='cifar')
    b = corrupt(x, 'gaussian_noise', 2, rng=5, protocol='cifar')
    c = corrupt(x, 'gaussian_noise', 2, rng=6, protocol='cifar')
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_motion_blur_follows_imagemagick_kernel():
    img = np.zeros((15, 15))
    img[7, 10] = 1.0
    out = _motion_blur(img, radius=3, sigma=1.0, angle=0.0)
    # 2 ceil(radius) + 1 = 7 taps; out(x) = sum_i k_i in(x + i): a one-sided trail towards smaller x
    nz = np.argwhere(out > 1e-12)
    assert set(map(tuple, nz.tolist())) == {(7, 10 - i) for i in range(7)}
    k = np.exp(-np.arange(7) ** 2 / 2.0)
    k /= k.sum()
    np.testing.assert_allclose([out[7, 10 - i] for i in range(7)], k, rtol=1e-12)
    assert out.sum() == pytest.approx(1.0)
    diag = _motion_blur(img, radius=3, sigma=1.0, angle=90.0)  # 90 degrees: the trail runs along rows
    assert set(map(tuple, np.argwhere(diag > 1e-12).tolist())) == {(7 - i, 10) for i in range(7)}


def test_matches_independent_implementation_where_identical():
    """corrupt-tta implements these ImageNet-C corruptions with the same (deterministic) definition."""
    tta = pytest.importorskip('corrupt_tta')
    x = natural_image(64, seed=2)
    for name in ('contrast', 'pixelate', 'jpeg_compression', 'defocus_blur', 'zoom_blur', 'gaussian_blur',
                 'brightness'):
        for severity in (1, 4):
            ours = corrupt(x, name, severity, rng=0, protocol='imagenet').astype(int)
            theirs = np.uint8(np.clip(tta.corrupt(x, severity=severity, corruption_name=name), 0, 255)).astype(int)
            assert np.abs(ours - theirs).max() <= 1, name


def test_bad_corruption_input_errors():
    x = natural_image(32)
    with pytest.raises(ValueError, match="unknown corruption 'snowstorm'"):
        corrupt(x, 'snowstorm', 1)
    for bad in (0, 6, 2.5, True, 'x'):
        with pytest.raises(ValueError, match='severity must be an integer in 1..5'):
            corrupt(x, 'fog', bad)
    with pytest.raises(ValueError, match='unknown corruption protocol'):
        corrupt(x, 'fog', 1, protocol='tiny')
    with pytest.raises(ValueError, match='uint8'):
        corrupt(x.astype(np.float32), 'fog', 1)
    with pytest.raises(ValueError, match='unknown corruption'):
        check_corruptions(['fog', 'nope'])
    assert check_corruptions('all') == ALL_CORRUPTIONS
    assert check_corruptions('benchmark') == CORRUPTIONS and len(CORRUPTIONS) == 15 and len(EXTRA_CORRUPTIONS) == 4
    assert check_severities('5,1') == (1, 5)


# ---------------------------------------------------------------------------------------------- clean / data

def test_clean_accuracy_top1_top5(trained, test_images, device):
    model = copy.deepcopy(trained)  # evaluate_clean moves the model to the device
    (row,) = evaluate_clean([('tiny', model)], test_images, batch_size=16, device=device, progress=False)
    with torch.no_grad():
        pred = trained(test_images.float()).argmax(1)
    expected = 100.0 * float((pred == test_images.labels).float().mean())
    if resolve_amp(device, 'auto') is None:  # float32: the same predictions
        assert row['top1'] == pytest.approx(expected)
    else:  # bf16 autocast (CUDA, CPUs with native bf16): within two images of the float32 pass
        assert abs(row['top1'] - expected) <= 100.0 / len(test_images) * 2
    assert row['top1'] > 90 and row['top5'] == 100.0 and row['count'] == len(test_images)


def test_eval_mode_and_empty_and_range_errors(trained, test_images):
    net = TinyNet().train()
    with pytest.raises(ValueError, match='training mode'):
        evaluate_clean([('m', wrap_model(net).train())], test_images, progress=False)
    with pytest.raises(ValueError, match='empty'):
        load_images(torch.utils.data.TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0)), progress=False)
    normalised = torch.utils.data.TensorDataset(torch.randn(4, 3, 16, 16) * 2, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r'must be in \[0, 1\]'):
        load_images(normalised, progress=False)
    with pytest.raises(ValueError, match='training mode'):
        run_attack(wrap_model(TinyNet()).train(), test_images.images[:2], test_images.labels[:2],
                   AttackSpec('pgd', 'linf', 0.1))
    with pytest.raises(ValueError, match=r"attack must be one of \['fgsm', 'pgd', 'autoattack'\], got 'cw'"):
        run_attack(wrap_model(TinyNet()).eval(), test_images.images[:2], test_images.labels[:2],
                   AttackSpec('cw', 'linf', 0.1))


# ---------------------------------------------------------------------------------------------- attacks

def test_pgd_large_eps_breaks_model_and_zero_eps_changes_nothing(trained, test_images, device):
    """The attacks run in float32 on either device; so does the clean pass they are compared with."""
    model = copy.deepcopy(trained)  # the evaluation moves the model to the device
    eps_list = [0.0, 0.01, 0.03, 0.1, 0.3]
    specs = [AttackSpec('pgd', 'linf', e, steps=10, restarts=1) for e in eps_list] + \
            [AttackSpec('fgsm', 'linf', 0.0, steps=1, restarts=0), AttackSpec('pgd', 'l2', 0.0), AttackSpec('pgd', 'l2', 8.0)]
    rows = evaluate_attacks([('tiny', model)], test_images, specs, count=32, batch_size=32, seed=0, device=device,
                            progress=False)
    clean = evaluate_clean([('tiny', model)], EvalImages(test_images.images[:32], test_images.labels[:32]),
                           device=device, amp='none', progress=False)[0]['top1']
    by = {(r['attack'], r['norm'], r['eps']): r['robust_top1'] for r in rows}
    assert clean > 90
    for key in (('pgd', 'linf', 0.0), ('fgsm', 'linf', 0.0), ('pgd', 'l2', 0.0)):
        assert by[key] == pytest.approx(clean)
    assert by[('pgd', 'linf', 0.3)] <= 10.0
    assert by[('pgd', 'l2', 8.0)] <= 25.0
    curve = [by[('pgd', 'linf', e)] for e in eps_list]
    assert all(b <= a for a, b in zip(curve, curve[1:])), curve
    assert all(r['clean_top1'] == pytest.approx(clean) for r in rows)


@pytest.mark.parametrize('norm, eps', [('linf', 0.1), ('l2', 4.0)])
def test_autoattack_standard_is_at_most_pgd(trained, test_images, norm, eps):
    """Croce & Hein's standard AutoAttack (pyautoattack) runs and breaks at least what PGD breaks at the same eps."""
    pytest.importorskip('pyautoattack')
    data = EvalImages(test_images.images[:12], test_images.labels[:12], name='gratings')
    specs = [AttackSpec('pgd', norm, eps, steps=10, restarts=1), AttackSpec('autoattack', norm, eps)]
    rows = evaluate_attacks([('tiny', trained)], data, specs, batch_size=16, seed=0, progress=False)
    by = {r['attack']: r for r in rows}
    assert by['autoattack']['robust_top1'] <= by['pgd']['robust_top1']
    assert by['autoattack']['robust_top1'] < by['autoattack']['clean_top1']  # it does break something
    assert by['autoattack']['library'].startswith('pyautoattack 0.2') and by['autoattack']['version'] == 'standard'
    assert by['autoattack']['components'] == ['apgd-ce', 'apgd-t', 'fab-t', 'square']
    assert by['pgd']['library'].startswith('adversarial-robustness-toolbox')
    assert 'AutoAttack (standard)' in markdown_report(rows)
    zero = run_attack(trained, data.images, data.labels, AttackSpec('autoattack', norm, 0.0), batch_size=16)
    assert np.array_equal(zero['robust_correct'], zero['clean_correct'])


def test_autoattack_rejects_non_standard_settings():
    with pytest.raises(ValueError, match='standard AutoAttack runs 100 APGD iterations'):
        EvalOptions(autoattack_eps=[0.03], autoattack_steps=5).validate()


def test_eps_and_attack_settings_validation():
    for eps, norm in ((-0.01, 'linf'), (1.5, 'linf'), (float('nan'), 'linf'), (60.0, 'l2')):
        with pytest.raises(ValueError, match='eps for'):
            check_eps(eps, norm, (3, 32, 32))
    with pytest.raises(ValueError, match='unknown norm'):
        check_eps(0.1, 'l1', (3, 32, 32))
    assert check_eps(55.0, 'l2', (3, 32, 32)) == 55.0
    assert parse_eps('8/255') == pytest.approx(8 / 255)
    with pytest.raises(ValueError, match='eps for linf'):
        build_attack_specs(EvalOptions(pgd_linf_eps=[2.0]), (3, 32, 32))
    with pytest.raises(ValueError, match='steps'):
        build_attack_specs(EvalOptions(pgd_steps=0), (3, 32, 32))


# ---------------------------------------------------------------------------------------------- shift / aliasing

class CircularInvariant(nn.Module):
    """Stride-1 circular convolution + global average: exactly invariant to circular shifts."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, padding_mode='circular')
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class CornerReader(nn.Module):
    """Classifies by the top-left pixel only: maximally shift-sensitive."""

    def forward(self, x):
        v = x[:, 0, 0, 0]
        return torch.stack([-(v - c) ** 2 for c in (0.1, 0.35, 0.6, 0.85)], dim=1)


def test_shift_images_matches_roll_and_crop():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    dh, dw = torch.tensor([1, 3]), torch.tensor([2, 0])
    out = shift_images(x, dh, dw, 'circular', 3)
    for i in range(2):
        torch.testing.assert_close(out[i], torch.roll(x[i], (int(dh[i]), int(dw[i])), (1, 2)))
    crop = shift_images(x, dh, dw, 'crop', 3)
    assert crop.shape == (2, 3, 3, 3)
    torch.testing.assert_close(crop[1], x[1, :, 3:6, 0:3])
    with pytest.raises(ValueError, match=r"shift mode must be one of \['circular', 'crop'\], got 'reflect'"):
        shift_images(x, dh, dw, 'reflect', 3)


@pytest.mark.filterwarnings('error')
def test_shift_plot_without_curves_draws_bars(tmp_path):
    from timm_asap_lab.evaluation.report import plot_shift
    rows = [{'task': 'shift', 'model': m, 'consistency': c} for m, c in (('a', 80.0), ('b', 90.0))]
    path = plot_shift(rows, tmp_path / 'shift.png')
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_shift_consistency(test_images):
    torch.manual_seed(0)
    models = [('inv', CircularInvariant().eval()), ('corner', CornerReader().eval())]
    rows = evaluate_shift_consistency(models, test_images, trials=3, max_shift=8, seed=0, progress=False)
    cons = {r['model']: r['consistency'] for r in rows if r['task'] == 'shift'}
    assert cons['inv'] == 100.0 and cons['corner'] < 80.0
    curve = [r for r in rows if r['task'] == 'shift_curve' and r['model'] == 'inv']
    assert [r['shift'] for r in curve] == list(range(9)) and all(r['agreement'] == 100.0 for r in curve)
    with pytest.raises(ValueError, match='max_shift'):
        evaluate_shift_consistency(models, test_images, max_shift=SIZE, progress=False)
    with pytest.raises(ValueError, match='trials'):
        evaluate_shift_consistency(models, test_images, trials=0, progress=False)


def test_aliasing_view_separates_subsampling_from_asap(test_images):
    from timm_asap.layers import ASAP2d
    torch.manual_seed(0)
    strided = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1)).eval()
    asap = nn.Sequential(ASAP2d(), nn.Conv2d(3, 4, 3, 1, 1)).eval()
    noise = EvalImages(torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    rows = aliasing_view([('strided', strided), ('asap', asap)], noise, count=4, progress=False)
    by = {r['model']: r for r in rows}
    assert by['strided']['layer_type'] == 'Conv2d' and by['asap']['layer_type'] == 'ASAP2d'
    assert by['strided']['out_shape'] == '4x16x16' and by['asap']['out_shape'] == '3x16x16'
    # white noise: about 3/4 of the energy lies above the new Nyquist frequency
    assert 0.6 < by['asap']['input_high_energy'] < 0.85
    assert by['strided']['output_alias_energy'] > 0.3
    assert by['asap']['output_alias_energy'] < 0.05


# ---------------------------------------------------------------------------------------------- summaries

def _corr_rows(model, acc_by_cs, clean):
    rows = [{'task': 'clean', 'model': model, 'top1': clean}]
    for (c, s), a in acc_by_cs.items():
        rows.append({'task': 'corruption', 'model': model, 'corruption': c, 'severity': s, 'top1': a})
    return rows


def test_mce_relative_mce_and_alexnet():
    base = _corr_rows('base', {('fog', s): 100 - 10 * s for s in range(1, 6)} |
                      {('contrast', s): 100 - 5 * s for s in range(1, 6)}, clean=95.0)
    model = _corr_rows('m', {('fog', s): 100 - 5 * s for s in range(1, 6)} |
                       {('contrast', s): 100 - 5 * s for s in range(1, 6)}, clean=97.0)
    rows = corruption_summary(base + model, baseline='base', alexnet=True)
    fog = next(r for r in rows if r['model'] == 'm' and r['corruption'] == 'fog')
    assert fog['ce'] == pytest.approx(75 / 150)
    assert fog['relative_ce'] == pytest.approx((75 - 5 * 3) / (150 - 5 * 5))
    assert fog['ce_alexnet'] == pytest.approx(0.15 / ALEXNET_ERR['fog'])
    mean = next(r for r in rows if r['model'] == 'm' and r['corruption'] == 'mean')
    assert mean['mce'] == pytest.approx(100 * (0.5 + 1.0) / 2)
    assert mean['mca'] == pytest.approx(np.mean([85, 85]))
    with pytest.raises(ValueError, match="baseline 'nobody'"):
        corruption_summary(model, baseline='nobody')
    with pytest.raises(ValueError, match='five severities'):
        corruption_summary(_corr_rows('x', {('fog', 1): 50.0}, 90.0), alexnet=True)


# ---------------------------------------------------------------------------------------------- pre-generated data

def test_pregenerated_cifar_c_and_imagenet_c_layouts(tmp_path, trained, test_images):
    from PIL import Image
    # two images of every class (ImageNet-C class indices are the ranks of the class folders present)
    keep = [i for c in range(NUM_CLASSES) for i in np.flatnonzero(test_images.labels.numpy() == c)[:2]]
    test_images = EvalImages(test_images.images[keep], test_images.labels[keep])
    n = len(keep)
    imgs = test_images.images.permute(0, 2, 3, 1).numpy()
    labels = test_images.labels.numpy()
    cifar = tmp_path / 'cifar_c'
    cifar.mkdir()
    # severity s holds the clean images for even s and inverted images for odd s
    stack = np.concatenate([imgs if s % 2 == 0 else 255 - imgs for s in range(1, 6)])
    np.save(cifar / 'fog.npy', stack)
    np.save(cifar / 'labels.npy', np.tile(labels, 5).astype(np.uint8))
    inet = tmp_path / 'imagenet_c' / 'weather' / 'fog'
    for s in (2, 3):
        for i, (img, lab) in enumerate(zip(imgs, labels)):
            d = inet / str(s) / f'class{lab}'
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img if s % 2 == 0 else 255 - img).save(d / f'{i:03d}.png')
    clean = evaluate_clean([('m', trained)], test_images, progress=False)[0]['top1']
    rows = evaluate_corruptions([('m', trained)], test_images, ['fog'], [2, 3], source='cifar_c',
                                source_dir=str(cifar), workers=0, progress=False)
    assert [r['count'] for r in rows] == [n, n]
    assert rows[0]['top1'] == pytest.approx(clean)
    rows = evaluate_corruptions([('m', trained)], test_images, ['fog'], [2], source='imagenet_c',
                                source_dir=str(tmp_path / 'imagenet_c'), workers=0, progress=False)
    assert rows[0]['top1'] == pytest.approx(clean) and rows[0]['count'] == n
    with pytest.raises(FileNotFoundError, match='no ImageNet-C folder'):
        evaluate_corruptions([('m', trained)], test_images, ['snow'], [1], source='imagenet_c',
                             source_dir=str(tmp_path / 'imagenet_c'), workers=0, progress=False)
    with pytest.raises(ValueError, match=r"corruption source must be one of \['generated'"):
        evaluate_corruptions([('m', trained)], test_images, ['fog'], [1], source='tiny_c', progress=False)


# ---------------------------------------------------------------------------------------------- end to end

def test_evaluate_models_writes_artefacts_and_outputs_round_trip(tmp_path, trained, test_images):
    torch.manual_seed(1)
    other = wrap_model(TinyNet(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # untrained: a weak second model
    dataset = torch.utils.data.TensorDataset(test_images.float(), test_images.labels)
    opts = dict(count=24, seed=3, workers=1, batch_size=16, corruptions=['gaussian_noise', 'contrast'],
                severities=[1, 5], fgsm_eps=['4/255'], pgd_linf_eps=[0, 0.1], pgd_steps=3, attack_count=8,
                shift_trials=2, max_shift=4, aliasing_count=4, mce_baseline='untrained', progress=False)
    rows = evaluate_models([('tiny', trained), ('untrained', other)], dataset, opts, tmp_path, dataset_name='gratings')
    tasks = {r['task'] for r in rows}
    assert tasks == {'clean', 'corruption', 'corruption_summary', 'attack', 'shift', 'shift_curve', 'aliasing'}
    for r in rows:
        assert r['dataset'] == 'gratings' and r['seed'] == 3 and 'count' in r
        assert r['version_torch'] == torch.__version__ and r['version_art'] != 'not installed'
    corr = [r for r in rows if r['task'] == 'corruption']
    assert len(corr) == 2 * 2 * 2 and all(r['count'] == 24 for r in corr)
    for name in ('results.json', 'results.md', 'corruptions.png', 'attacks.png', 'shift_consistency.png',
                 'aliasing.png'):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / 'corruptions.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    # JSON round trip
    back, config = read_results(tmp_path / 'results.json')
    assert back == rows and config['options']['count'] == 24 and config['models'] == ['tiny', 'untrained']
    write_results(tmp_path / 'again.json', back, config)
    assert read_results(tmp_path / 'again.json') == (rows, config)
    # Markdown round trip: every number in the tables is the row value rounded to 2 decimals
    md = (tmp_path / 'results.md').read_text()
    assert md == markdown_report(rows)
    summary, per_corruption = parse_markdown_tables(md)
    clean = {r['model']: r for r in rows if r['task'] == 'clean'}
    mean = {r['model']: r for r in rows if r['task'] == 'corruption_summary' and r['corruption'] == 'mean'}
    pgd = {r['model']: r['robust_top1'] for r in rows if r['task'] == 'attack' and r['attack'] == 'pgd' and r['eps'] == 0.1}
    shift = {r['model']: r['consistency'] for r in rows if r['task'] == 'shift'}
    assert [t['Model'] for t in summary] == ['tiny', 'untrained']
    for t in summary:
        m = t['Model']
        assert t['Clean top-1'] == round(clean[m]['top1'], 2) and t['Clean top-5'] == round(clean[m]['top5'], 2)
        assert t['mCA'] == round(mean[m]['mca'], 2)
        assert t['PGD-3 L∞ ε=0.1'] == round(pgd[m], 2)
        assert t['Shift consistency'] == round(shift[m], 2)
    assert summary[0]['mCE (vs untrained)'] == round(mean['tiny']['mce'], 2) and summary[1]['mCE (vs untrained)'] == 100.0
    per = {r['Corruption']: r for r in per_corruption}
    for r in rows:
        if r['task'] == 'corruption_summary' and r['corruption'] != 'mean':
            assert per[r['corruption']][r['model']] == round(r['top1'], 2)
    with pytest.raises(ValueError, match='not a timm-asap evaluation results file'):
        (tmp_path / 'bad.json').write_text('{"rows": []}')
        read_results(tmp_path / 'bad.json')


def test_options_reject_unknown_and_bad_values(trained, test_images):
    with pytest.raises(ValueError, match="unknown evaluation option 'eps'"):
        EvalOptions.from_dict({'eps': 1})
    with pytest.raises(ValueError, match='severity'):
        evaluate_models([('m', trained)], test_images, {'severities': [0]})
    with pytest.raises(ValueError, match='unknown corruption'):
        evaluate_models([('m', trained)], test_images, {'corruptions': ['rain']})
    assert EvalOptions(corruptions='none').validate().corruptions == []  # as --corruptions none
    with pytest.raises(ValueError, match='no models'):
        evaluate_models([], test_images, {})


def test_importing_needs_no_heavy_dependencies():
    code = textwrap.dedent("""
        import sys
        for name in ('art', 'cv2', 'skimage', 'corrupt_tta'):
            sys.modules[name] = None  # make the import fail
        import timm_asap, timm_asap_lab.evaluation
        import numpy as np
        try:
            timm_asap_lab.evaluation.corrupt(np.zeros((16, 16, 3), np.uint8), 'defocus_blur', 1)
        except ImportError as e:
            assert "pip install -e '.[eval]'" in str(e), e
            print('ok')
    """)
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'ok'
