"""``timm-asap-evaluate`` / ``scripts/evaluate.py``: argument handling, YAML defaults, artefacts, errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from timm_asap_lab.cli.evaluate import main, parse_model_spec

pytest.importorskip('art')
pytest.importorskip('cv2')

FMNIST_DIR = Path('/usr/share/datasets/fashion-mnist')


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    """An ImageFolder tree ``validation/<class>/*.png`` of 12 small images in 3 classes."""
    from PIL import Image
    root = tmp_path_factory.mktemp('folder')
    rng = np.random.default_rng(0)
    for c in range(3):
        d = root / 'validation' / f'class{c}'
        d.mkdir(parents=True)
        for i in range(4):
            img = np.clip(rng.normal(60 + 70 * c, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f'{i}.png')
    return root


def _base_args(image_folder, out, *extra):
    return ['--model', 'a=test_resnet', '--model', 'b=test_resnet', '--num-classes', '3', '--img-size', '32',
            '--dataset', 'folder', '--data-dir', str(image_folder), '--split', 'validation', '--count', '8',
            '--corruptions', 'gaussian_noise,pixelate', '--severities', '1,5', '--fgsm-eps', '2/255',
            '--pgd-linf-eps', '0,4/255', '--pgd-steps', '2', '--attack-count', '4', '--shift-trials', '1',
            '--max-shift', '2', '--aliasing-count', '2', '--workers', '0', '--progress', 'false',
            '--output', str(out), *extra]


def test_cli_side_by_side_writes_all_artefacts(image_folder, tmp_path, capsys):
    torch.manual_seed(0)
    assert main(_base_args(image_folder, tmp_path)) == 0
    for name in ('results.json', 'results.md', 'evaluate_config.yaml', 'corruptions.png', 'attacks.png',
                 'shift_consistency.png', 'aliasing.png'):
        assert (tmp_path / name).is_file(), name
    payload = json.loads((tmp_path / 'results.json').read_text())
    models = {r['model'] for r in payload['rows']}
    assert models == {'a', 'b'}
    clean = [r for r in payload['rows'] if r['task'] == 'clean']
    assert all(r['count'] == 8 and r['dataset'] == 'folder:validation' and r['num_classes'] == 3 for r in clean)
    corr = [r for r in payload['rows'] if r['task'] == 'corruption']
    assert {(r['corruption'], r['severity']) for r in corr} == {('gaussian_noise', 1), ('gaussian_noise', 5),
                                                                 ('pixelate', 1), ('pixelate', 5)}
    attacks = [r for r in payload['rows'] if r['task'] == 'attack']
    assert {(r['attack'], r['eps']) for r in attacks} == {('fgsm', 2 / 255), ('pgd', 0.0), ('pgd', 4 / 255)}
    config = yaml.safe_load((tmp_path / 'evaluate_config.yaml').read_text())
    assert config['model'] == ['a=test_resnet', 'b=test_resnet'] and config['count'] == 8
    assert '| a |' in capsys.readouterr().out


def test_cli_yaml_defaults_and_errors(image_folder, tmp_path, capsys):
    cfg = tmp_path / 'opts.yaml'
    cfg.write_text(yaml.safe_dump({'corruptions': ['fog'], 'severities': [2], 'fgsm_eps': [], 'pgd_linf_eps': [],
                                   'shift_trials': 0, 'aliasing_count': 0, 'plots': False}))
    out = tmp_path / 'yaml'
    args = ['--config', str(cfg), '--model', 'test_resnet', '--num-classes', '3', '--img-size', '32', '--dataset',
            'folder', '--data-dir', str(image_folder), '--count', '4', '--workers', '0', '--progress', 'false',
            '--output', str(out)]
    assert main(args) == 0
    rows = json.loads((out / 'results.json').read_text())['rows']
    assert {r['task'] for r in rows} == {'clean', 'corruption', 'corruption_summary'}
    assert [(r['corruption'], r['severity']) for r in rows if r['task'] == 'corruption'] == [('fog', 2)]
    assert not (out / 'corruptions.png').exists()

    bad = tmp_path / 'bad.yaml'
    bad.write_text(yaml.safe_dump({'epsilon': 3}))
    assert main(['--config', str(bad), '--model', 'test_resnet']) == 2
    assert "unknown option 'epsilon'" in capsys.readouterr().err
    for extra, message in ((['--corruptions', 'rain'], "unknown corruption 'rain'"),
                           (['--severities', '6'], 'severity must be an integer in 1..5'),
                           (['--pgd-linf-eps', '1.5'], 'eps for linf must be in [0, 1]'),
                           (['--pgd-l2-eps', '-1'], 'eps for l2 must be in')):
        assert main(_base_args(image_folder, tmp_path / 'err', *extra)) == 2
        assert message in capsys.readouterr().err
    assert main(['--dataset', 'folder']) == 2
    assert 'at least one --model' in capsys.readouterr().err
    empty = tmp_path / 'empty' / 'validation'
    empty.mkdir(parents=True)
    assert main(['--model', 'test_resnet', '--dataset', 'folder', '--data-dir', str(empty.parent),
                 '--output', str(tmp_path / 'e'), '--progress', 'false', '--workers', '0']) == 2
    capsys.readouterr()
    for data_dir, message in (([], "dataset 'folder' needs a data folder"),
                              (['--data-dir', str(tmp_path / 'missing')], 'missing does not exist')):
        assert main(['--model', 'test_resnet', '--dataset', 'folder', *data_dir, '--output', str(tmp_path / 'e'),
                     '--progress', 'false', '--workers', '0']) == 2
        assert message in capsys.readouterr().err


def test_parse_model_spec():
    assert parse_model_spec('resnet50') == ('resnet50', 'resnet50', '')
    assert parse_model_spec('asap=resnet50_asap@/ck/p.pth') == ('asap', 'resnet50_asap', '/ck/p.pth')
    with pytest.raises(ValueError, match='empty model name'):
        parse_model_spec('x=@a.pth')


@pytest.mark.skipif(not (FMNIST_DIR / 't10k-images-idx3-ubyte.gz').is_file(), reason='Fashion-MNIST IDX files absent')
def test_cli_fashion_mnist_grey_model(tmp_path):
    pytest.importorskip('timm_asap_lab.data')
    out = tmp_path / 'fm'
    args = ['--model', 'test_resnet', '--num-classes', '10', '--in-chans', '1', '--img-size', '32',
            '--dataset', 'fashion_mnist', '--split', 'test', '--count', '6', '--corruptions', 'frost',
            '--severities', '3', '--fgsm-eps', 'none', '--pgd-linf-eps', '8/255', '--pgd-steps', '1',
            '--shift-trials', '1', '--max-shift', '2', '--aliasing-count', '0', '--plots', 'false',
            '--workers', '0', '--progress', 'false', '--output', str(out)]
    assert main(args) == 0
    rows = json.loads((out / 'results.json').read_text())['rows']
    clean = next(r for r in rows if r['task'] == 'clean')
    assert clean['count'] == 6 and clean['num_classes'] == 10 and clean['dataset'] == 'fashion_mnist:test'


def test_cli_run_config_supplies_model_and_data(tmp_path):
    from timm_asap_lab.config import list_hub_configs
    name = 'resnet18_cifar.fmnist'
    if name not in list_hub_configs() or not (FMNIST_DIR / 't10k-images-idx3-ubyte.gz').is_file():
        pytest.skip('shipped Fashion-MNIST config or IDX files absent')
    pytest.importorskip('timm_asap_lab.data')
    out = tmp_path / 'rc'
    args = ['--run-config', name, '--count', '4', '--corruptions', 'none', '--fgsm-eps', 'none', '--pgd-linf-eps',
            'none', '--shift-trials', '0', '--aliasing-count', '0', '--plots', 'false', '--workers', '0',
            '--progress', 'false', '--output', str(out)]
    assert main(args) == 0
    config = yaml.safe_load((out / 'evaluate_config.yaml').read_text())
    assert config['model'] == [name] and config['dataset'] == 'fashion_mnist' and config['crop_pct'] == 1.0
    rows = json.loads((out / 'results.json').read_text())['rows']
    assert rows[0]['model'] == name and rows[0]['num_classes'] == 10


def test_checkpoint_of_a_finetuning_run_brings_its_normalisation(tmp_path):
    """A fine-tuned checkpoint is evaluated with the statistics it was trained with (its folder's config.yaml),
    not the architecture's pretrained_cfg; explicit values still win."""
    pytest.importorskip('timm_asap_lab.data')
    import timm
    from safetensors.torch import save_file

    import timm_asap.models  # noqa: F401
    from timm_asap_lab.config import load_config, save_config
    from timm_asap_lab.evaluation import create_eval_model
    run = tmp_path / 'run'
    cfg = load_config('resnet18_cifar_asap.fmnist')  # trained with mean 0.2860, std 0.3530
    save_config(cfg, run / 'config.yaml')
    model = timm.create_model('resnet18_cifar_asap', num_classes=10, in_chans=1, layers=[1, 1, 1, 1])
    save_file(model.state_dict(), run / 'model.safetensors')
    assert model.pretrained_cfg['mean'] != (0.2860,)  # the architecture's default is CIFAR-10's
    kwargs = dict(num_classes=10, in_chans=1, layers=[1, 1, 1, 1])
    wrapped = create_eval_model('resnet18_cifar_asap', checkpoint_path=str(run / 'model.safetensors'), **kwargs)
    assert wrapped.mean.flatten().tolist() == pytest.approx([0.2860]) and wrapped.std.flatten().tolist() == pytest.approx([0.3530])
    explicit = create_eval_model('resnet18_cifar_asap', checkpoint_path=str(run / 'model.safetensors'),
                                 mean=[0.5], std=[0.25], **kwargs)
    assert explicit.mean.flatten().tolist() == [0.5] and explicit.std.flatten().tolist() == [0.25]
    # a config without data.mean/std: the model's pretrained_cfg, as training resolved it (not ImageNet's)
    from timm_asap_lab.config import apply_overrides
    save_config(apply_overrides(cfg, ['data.mean=null', 'data.std=null']), run / 'config.yaml')
    unset = create_eval_model('resnet18_cifar_asap', checkpoint_path=str(run / 'model.safetensors'), **kwargs)
    cifar_mean = sum(model.pretrained_cfg['mean']) / 3  # 1 channel: the average of the RGB statistics
    assert unset.mean.flatten().tolist() == pytest.approx([cifar_mean])
    (run / 'config.yaml').unlink()  # a bare checkpoint: the pretrained_cfg's statistics
    bare = create_eval_model('resnet18_cifar_asap', checkpoint_path=str(run / 'model.safetensors'), **kwargs)
    assert bare.mean.flatten().tolist() != pytest.approx([0.2860])
