"""The main job at its smallest size: every artefact exists and the reload gives identical logits."""
import json

import pytest

from timm_asap_lab.data import DEFAULT_FASHION_MNIST_DIR, find_fashion_mnist
import torch

from timm_asap_lab.study import (
    FAMILIES, StudyOptions, _fit_seeds, convergence, default_options, estimate, full_options, preset_options,
    run_study, standard_error, study_config, study_table)


@pytest.fixture
def fashion_mnist_dir(tmp_path):
    """Debian's Fashion-MNIST when installed, else a few hundred synthetic images in the same IDX format."""
    if find_fashion_mnist(DEFAULT_FASHION_MNIST_DIR, 'test') is not None:
        return DEFAULT_FASHION_MNIST_DIR
    from finetune_helpers import write_fake_fashion_mnist
    return write_fake_fashion_mnist(tmp_path / 'fmnist', n_train=300, n_test=100)


def test_options_validation():
    assert default_options().families == ['preactresnet18_w8'] and default_options().train_subset == 30000
    assert preset_options('cpu').train_subset is None and preset_options('cpu').corruption_count == 1000
    full = full_options()
    assert full.families == ['resnet18_cifar', 'preactresnet18', 'wide_resnet28_10'] and full.seeds == [0, 1, 2]
    assert full.train_subset is None and full.epochs is None and full.full
    assert preset_options('cpu').seeds == [0, 1, 2] and preset_options('gpu').families == ['resnet18_cifar']
    with pytest.raises(ValueError, match='families must be a non-empty subset'):
        default_options(families=['resnet50'])
    with pytest.raises(ValueError, match='distinct'):
        default_options(seeds=[1, 1])
    with pytest.raises(ValueError, match='eps must lie in'):
        default_options(eps=[8.0])
    with pytest.raises(ValueError, match='train_subset must be >= 1'):
        default_options(train_subset=0)


def test_small_family_builds_with_its_width_and_all_variants():
    import timm
    fam = FAMILIES['preactresnet18_w8']
    for label, arch in fam.variants():
        model = timm.create_model(arch, num_classes=10, in_chans=1, **fam.model_args)
        assert sum(p.numel() for p in model.parameters()) == pytest.approx(0.176e6, rel=0.01), label
        assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_config_scales_lr_and_records_model_args():
    opts = preset_options('gpu')
    cfg = study_config('resnet18_cifar_asap', 'resnet18_cifar_asap', FAMILIES['resnet18_cifar'], 1, opts, '/data')
    assert cfg.train.batch_size == 512 and cfg.train.lr == pytest.approx(0.05 * 512 / 128)
    assert cfg.model.pool == 'asap' and cfg.train.seed == 1 and cfg.hub.repo_id == 'timm-asap/resnet18_cifar_asap.fmnist'
    small = study_config('preactresnet18_w8_flc', 'preactresnet18_flc', FAMILIES['preactresnet18_w8'], 0,
                         default_options(), '/data')
    assert small.model.model_args == {'channels': [8, 16, 32, 64], 'stem_chs': 8} and small.model.pool == 'flc'


def test_standard_errors_convergence_and_table():
    assert standard_error(90.0, 10000) == pytest.approx(0.3)
    assert standard_error(50.0, 100) == pytest.approx(5.0) and standard_error(50.0, None) is None
    assert convergence([{'val_top1': 80}, {'val_top1': 88}, {'val_top1': 88.3}]) == \
        {'val_top1': [80.0, 88.0, 88.3], 'last_gain_pp': 0.3, 'plateaued': True}
    assert convergence([{'val_top1': 80}, {'val_top1': 85}])['plateaued'] is False
    assert convergence([{'val_top1': 80}])['plateaued'] is None
    rows = {s: [{'task': 'clean', 'model': 'a', 'top1': 90.0 + s, 'count': 10000},
                {'task': 'shift', 'model': 'a', 'consistency': 95.0, 'count': 1000}] for s in (0, 2)}
    md, table = study_table(rows)
    assert table[0]['clean top-1'] == 91.0 and table[0]['clean top-1 std'] == pytest.approx(2 ** 0.5)
    se = (standard_error(90, 10000) ** 2 + standard_error(92, 10000) ** 2) ** 0.5 / 2
    assert table[0]['clean top-1 se'] == pytest.approx(se)
    assert '| a | 91.0 ± 1.4 (SE 0.2) | 95.0 ± 0.0 (SE 0.5) |' in md


def test_fewer_seeds_when_time_is_short():
    opts = preset_options('gpu', max_seconds=100)
    expected = {'train_s': 150, 'evaluate_s': 30, 'corruption_sets_s': 10, 'publish_s': 10, 'total_s': 200}
    lines = []
    fitted, exp = _fit_seeds(opts, expected, lines.append)  # 20 s fixed + 60 s per seed
    assert fitted.seeds == [0] and exp['total_s'] == 80 and exp['seeds_planned'] == [0, 1, 2]
    assert lines == ['time left 1.7 min: running 1 of the 3 seeds, [0] (expected 1.3 min)']
    fitted, _ = _fit_seeds(preset_options('gpu', max_seconds=150), expected, lines.append)
    assert fitted.seeds == [0, 1]


def test_estimate_counts_every_part():
    opts = preset_options('default', train_subset=1000, val_subset=100, epochs=1, eval_count=100,
                          corruption_count=10, attack_count=5, shift_count=10)
    est = estimate(opts, torch.device('cpu'))
    assert [r['model'] for r in est['rates']] == ['preactresnet18_w8', 'preactresnet18_w8_flc', 'preactresnet18_w8_asap']
    assert all(r['train_img_s'] > 0 and r['infer_img_s'] > 0 for r in est['rates'])
    parts = est['train_s'] + est['corruption_sets_s'] + est['evaluate_s'] + est['publish_s']
    assert abs(est['total_s'] - parts) <= 2


@pytest.mark.slow
def test_study_smallest_size(tmp_path, fashion_mnist_dir):
    out = tmp_path / 'study'
    opts = StudyOptions(output_dir=str(out), train_subset=300, val_subset=100, epochs=2, eval_count=40,
                        corruption_count=20, attack_count=20, shift_count=20, severities=[1, 3], shift_trials=1,
                        data_dir=str(fashion_mnist_dir), progress=False, workers=0)
    result = run_study(opts)
    archs = ['preactresnet18_w8', 'preactresnet18_w8_flc', 'preactresnet18_w8_asap']
    for arch in archs:
        run = out / 'runs' / arch / 'seed0'
        for name in ('config.yaml', 'model.safetensors', 'metrics.json', 'summary.csv'):
            assert (run / name).is_file(), run / name
        hub = out / 'hub' / arch
        for name in ('model.safetensors', 'config.json', 'README.md'):
            assert (hub / name).is_file(), hub / name
        assert not list(hub.glob('*.bin')) and not list(hub.glob('*.pth'))
    ev = out / 'eval' / 'preactresnet18_w8' / 'seed0'
    for name in ('results.json', 'results.md', 'corruptions.png', 'attacks.png', 'shift_consistency.png'):
        assert (ev / name).is_file(), ev / name
    assert (out / 'summary.md').is_file() and (out / 'summary.png').is_file()
    saved = json.loads((out / 'study.json').read_text())
    assert [c['model'] for c in saved['reload']] == archs
    assert all(c['identical'] for c in result['reload'])
    assert {r['model'] for r in result['table']} == set(archs)
    assert all(len(c['val_top1']) == 2 and c['plateaued'] is not None for c in result['convergence'].values())
    assert set(result['estimate']) >= {'rates', 'train_s', 'evaluate_s', 'total_s'}
    assert len(list((out / 'eval_cache').glob('*.safetensors'))) == 15 * 2  # made once for the three models
    assert '(SE ' in (out / 'summary.md').read_text() and 'Convergence' in (out / 'summary.md').read_text()
    # re-running resumes: nothing is trained or evaluated again
    again = run_study(opts)
    assert again['timings']['train_s'] < result['timings']['train_s']
    assert again['table'] == result['table']
