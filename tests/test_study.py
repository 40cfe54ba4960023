"""The main job at its smallest size: every artefact exists and the reload gives identical logits."""
import json

import pytest

from timm_asap.data import DEFAULT_FASHION_MNIST_DIR, find_fashion_mnist
from timm_asap.study import StudyOptions, default_options, full_options, run_study


@pytest.fixture
def fashion_mnist_dir(tmp_path):
    """Debian's Fashion-MNIST when installed, else a few hundred synthetic images in the same IDX format."""
    if find_fashion_mnist(DEFAULT_FASHION_MNIST_DIR, 'test') is not None:
        return DEFAULT_FASHION_MNIST_DIR
    from finetune_helpers import write_fake_fashion_mnist
    return write_fake_fashion_mnist(tmp_path / 'fmnist', n_train=300, n_test=100)


def test_options_validation():
    assert default_options().families == ['resnet18_cifar']
    full = full_options()
    assert full.families == ['resnet18_cifar', 'preactresnet18', 'wide_resnet28_10'] and full.seeds == [0, 1, 2]
    assert full.train_subset is None and full.epochs is None
    with pytest.raises(ValueError, match='families must be a non-empty subset'):
        default_options(families=['resnet50'])
    with pytest.raises(ValueError, match='distinct'):
        default_options(seeds=[1, 1])
    with pytest.raises(ValueError, match='eps must lie in'):
        default_options(eps=[8.0])
    with pytest.raises(ValueError, match='train_subset must be >= 1'):
        default_options(train_subset=0)


@pytest.mark.slow
def test_study_smallest_size(tmp_path, fashion_mnist_dir):
    out = tmp_path / 'study'
    opts = StudyOptions(output_dir=str(out), train_subset=300, val_subset=100, epochs=1, eval_count=40,
                        attack_count=20, severities=[1, 3], shift_trials=1, data_dir=str(fashion_mnist_dir),
                        progress=False, workers=0)
    result = run_study(opts)
    archs = ['resnet18_cifar', 'resnet18_cifar_flc', 'resnet18_cifar_asap']
    for arch in archs:
        run = out / 'runs' / arch / 'seed0'
        for name in ('config.yaml', 'model.safetensors', 'metrics.json', 'summary.csv'):
            assert (run / name).is_file(), run / name
        hub = out / 'hub' / arch
        for name in ('model.safetensors', 'config.json', 'README.md'):
            assert (hub / name).is_file(), hub / name
        assert not list(hub.glob('*.bin')) and not list(hub.glob('*.pth'))
    ev = out / 'eval' / 'resnet18_cifar' / 'seed0'
    for name in ('results.json', 'results.md', 'corruptions.png', 'attacks.png', 'shift_consistency.png'):
        assert (ev / name).is_file(), ev / name
    assert (out / 'summary.md').is_file() and (out / 'summary.png').is_file()
    saved = json.loads((out / 'study.json').read_text())
    assert [c['model'] for c in saved['reload']] == archs
    assert all(c['identical'] for c in result['reload'])
    assert {r['model'] for r in result['table']} == set(archs)
    # re-running resumes: nothing is trained or evaluated again
    again = run_study(opts)
    assert again['timings']['train_s'] < result['timings']['train_s']
    assert again['table'] == result['table']
