"""Bad inputs of the evaluation and the study: each gives a clear error or a correct, counted result."""
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from timm_asap_lab.evaluation import EvalOptions, create_eval_dataset, evaluate_models, load_images, wrap_model
from timm_asap_lab.study import PRESETS, StudyOptions, check_device, preset_options


def _folder(root, bad_names=('b_bad.png',), good=4):
    """An ImageFolder split ``val`` with ``good`` readable grey images per class and the given damaged files."""
    for cls in ('cat', 'dog'):
        (root / 'val' / cls).mkdir(parents=True)
        for i in range(good):
            Image.new('L', (8, 8), color=40 * i + (100 if cls == 'dog' else 0)).save(root / 'val' / cls / f'a{i}.png')
    for name in bad_names:
        (root / 'val' / 'cat' / name).write_bytes(b'\x89PNG\r\n\x1a\nnot really an image')
    return root


def test_unreadable_images_are_skipped_counted_and_reported(tmp_path):
    _folder(tmp_path / 'data')
    ds = create_eval_dataset('folder', str(tmp_path / 'data'), split='val', img_size=8, in_chans=1)
    assert len(ds) == 9
    images = load_images(ds, progress=False, max_unreadable=0.2)
    assert len(images) == 8 and images.unreadable == 1
    # skipped, not replaced: every good image exactly once, each with its own label
    assert len({img.numpy().tobytes() for img in images.images}) == 8
    assert images.labels.tolist() == [0] * 4 + [1] * 4
    assert 4 not in images.indices  # the damaged file sorts after a0..a3 in 'cat'

    class Grey(nn.Module):
        def forward(self, x):
            return torch.stack([1 - x.mean((1, 2, 3)), x.mean((1, 2, 3))], 1)

    out = tmp_path / 'eval'
    evaluate_models([('m', wrap_model(Grey(), (0.5,), (0.5,)).eval())], ds,
                    dict(count=None, corruptions='none', fgsm_eps=[], pgd_linf_eps=[], shift_trials=0,
                         aliasing_count=0, plots=False, progress=False, max_unreadable=0.2, workers=0), out,
                    dataset_name='folder:val')
    saved = json.loads((out / 'results.json').read_text())
    assert saved['config']['unreadable'] == 1 and saved['config']['count'] == 8
    assert '8 images (1 unreadable image skipped)' in (out / 'results.md').read_text()


def test_too_many_unreadable_images_is_an_error_naming_them(tmp_path):
    _folder(tmp_path / 'data', bad_names=('b_bad.png', 'c_bad.png'), good=2)
    ds = create_eval_dataset('folder', str(tmp_path / 'data'), split='val', img_size=8, in_chans=1)
    with pytest.raises(ValueError, match=r"2 of 6 selected images are unreadable, more than max_unreadable=0.01 .*b_bad.png"):
        load_images(ds, progress=False)
    with pytest.raises(ValueError, match='max_unreadable must be a fraction in'):
        EvalOptions(max_unreadable=2).validate()


def test_bad_evaluation_options_name_what_is_allowed():
    with pytest.raises(ValueError, match="precision must be one of"):
        EvalOptions(amp='bf17').validate()
    with pytest.raises(ValueError, match='corruption_workers must be >= 0'):
        EvalOptions(corruption_workers=-1).validate()
    with pytest.raises(ValueError, match='corruption_count must be >= 1'):
        EvalOptions(corruption_count=0).validate()


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="unknown preset 'fast'; presets: default, cpu, gpu, full"):
        preset_options('fast')
    assert set(PRESETS) == {'default', 'cpu', 'gpu', 'full'}


def test_gpu_preset_without_cuda_is_an_error_unless_cpu_is_asked_for(monkeypatch, capsys):
    opts = preset_options('gpu')
    with pytest.raises(ValueError, match="preset 'gpu' is sized for a CUDA GPU and none is available.*--device cpu"):
        check_device(opts, torch.device('cpu'))
    check_device(preset_options('gpu', device='cpu'), torch.device('cpu'))  # asked for: runs, with a warning
    check_device(preset_options('default'), torch.device('cpu'))
    from timm_asap_lab.cli.study import main
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert main(['--preset', 'gpu', '--output', 'unused']) == 2
    assert "timm-asap study: error: preset 'gpu' is sized for a CUDA GPU" in capsys.readouterr().err
    assert main(['--preset', 'x']) == 2
    assert "timm-asap study: error: unknown preset 'x'" in capsys.readouterr().err


def test_study_options_errors():
    with pytest.raises(ValueError, match='families must be a non-empty subset'):
        StudyOptions(families=['resnet50']).validate()
    with pytest.raises(ValueError, match='max_seconds must be > 0'):
        StudyOptions(max_seconds=0).validate()
    with pytest.raises(ValueError, match='precision must be one of'):
        StudyOptions(amp='fp8').validate()


def test_checkpoint_of_another_architecture_with_the_same_tensors_is_an_error(tmp_path):
    import timm
    from timm_asap_lab.evaluation import create_eval_model
    from timm_asap.hub import IntegrityError, weights_metadata
    from timm_asap_lab.train.checkpoint import save_weights
    asap = timm.create_model('resnet18_cifar_asap', num_classes=10, in_chans=1)
    path = save_weights(asap.state_dict(), tmp_path / 'model.safetensors',
                        metadata=weights_metadata(asap, 'resnet18_cifar_asap'))
    with pytest.raises(IntegrityError, match=r"'resnet18_cifar_asap'.*'resnet18_cifar_flc'"):
        create_eval_model('resnet18_cifar_flc', checkpoint_path=str(path), num_classes=10, in_chans=1)
    loaded = create_eval_model('resnet18_cifar_asap', checkpoint_path=str(path), num_classes=10, in_chans=1)
    weights = {k.split('.', 1)[1]: v for k, v in loaded.state_dict().items() if k.startswith('model.')}
    assert all(torch.equal(weights[k], v) for k, v in asap.state_dict().items())


def test_pretrained_weights_unreachable_is_one_line_with_the_offline_hint(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants
    from timm_asap_lab.cli.evaluate import main
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'empty-cache'))
    rc = main(['--model', 'resnet18_asap.tv_in1k_base', '--pretrained', '--dataset', 'fashion_mnist',
               '--corruptions', 'none', '--count', '8', '--output', str(tmp_path / 'out')])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 3
    assert 'timm/resnet18.tv_in1k' in err and 'HF_HUB_OFFLINE=1' in err and 'empty-cache' in err


# ---------------------------------------------------------------------------------------------------------------
# checkpoints evaluated by name: identity, recorded arguments, classes, mismatches (issue 21, points 4-8)

PREACT_ARGS = {'channels': [8, 16, 32, 64], 'stem_chs': 8}  # the study's reduced-width pre-activation ResNet-18
_QUICK = ['--corruptions', 'none', '--fgsm-eps', 'none', '--pgd-linf-eps', 'none', '--shift-trials', '0',
          '--aliasing-count', '0', '--plots', 'false', '--progress', 'false', '--workers', '0', '--amp', 'none']


@pytest.fixture(scope='module')
def fmnist_run(tmp_path_factory):
    """A finished one-epoch fine-tuning run of preactresnet18_asap with model_args on synthetic Fashion-MNIST at
    28x28 (no resize anywhere): ``(data_dir, run folder)``."""
    from finetune_helpers import tiny_config, write_fake_fashion_mnist
    from timm_asap_lab.train import finetune
    root = tmp_path_factory.mktemp('eval-ckpt')
    data = write_fake_fashion_mnist(root / 'fmnist', n_train=48, n_test=24)
    cfg = tiny_config(data, model={'architecture': 'preactresnet18_asap', 'img_size': 28,
                                   'model_args': dict(PREACT_ARGS)},
                      train={'epochs': 1, 'batch_size': 16})
    finetune(cfg, root / 'run', device='cpu', progress=False, handle_signals=False)
    return data, root / 'run'


def _evaluate(args, out, capsys):
    """The evaluate CLI's exit status and its stderr lines."""
    from timm_asap_lab.cli.evaluate import main
    capsys.readouterr()
    rc = main([*_QUICK, *args, '--output', str(out)])
    return rc, capsys.readouterr().err.strip().splitlines()


def _fmnist(data):
    return ['--dataset', 'fashion_mnist', '--data-dir', str(data), '--split', 'test', '--count', 'all']


def _grey_test_resnet(tmp_path):
    """``--model`` arguments of a 10-class grey timm test model saved as plain safetensors (which the code before
    the checkpoint records loaded as well), so a test fails on the check it is about."""
    import timm
    from safetensors.torch import save_file
    path = tmp_path / 'test_resnet.safetensors'
    save_file(timm.create_model('test_resnet', num_classes=10, in_chans=1).state_dict(), path)
    return ['--model', f'test_resnet@{path}', '--num-classes', '10', '--in-chans', '1', '--img-size', '28']


def _plain_state_dict(model, path):
    torch.save(model.state_dict(), path)  # a plain timm-style state dict: records nothing about its model
    return path


def test_finetuning_pth_under_another_architecture_is_refused(fmnist_run, tmp_path, capsys):
    data, run = fmnist_run
    rc, err = _evaluate(['--model', f"preactresnet18_flc@{run / 'last.pth'}", *_fmnist(data)], tmp_path, capsys)
    assert rc == 2
    assert "holds weights of architecture 'preactresnet18_asap'" in err[-1] and "'preactresnet18_flc'" in err[-1]
    assert 'last.pth' in err[-1] and not (tmp_path / 'results.json').exists()


def test_finetuning_checkpoint_records_its_pooling(fmnist_run):
    import timm
    from timm_asap.models import pooling_signature
    ckpt = torch.load(fmnist_run[1] / 'best.pth', map_location='cpu', weights_only=True)
    model = timm.create_model('preactresnet18_asap', num_classes=10, in_chans=1, **PREACT_ARGS)
    assert ckpt['pooling'] == pooling_signature(model) and ckpt['pooling']


def test_hub_folder_under_another_architecture_is_refused(fmnist_run, tmp_path):
    from timm_asap_lab.evaluation import create_eval_model
    from timm_asap.hub import IntegrityError
    from timm_asap_lab.publish.export import export_output_dir
    hub = export_output_dir(fmnist_run[1], tmp_path / 'hub', allow_no_eval=True, repo_id='org/preact',
                            overrides=['hub.license=apache-2.0', 'hub.datasets=[zalando-datasets/fashion_mnist]'])
    with pytest.raises(IntegrityError, match=r"'preactresnet18_asap' \(.*config\.json records it\).*'preactresnet18'"):
        create_eval_model('preactresnet18', checkpoint_path=str(hub))
    loaded = create_eval_model('preactresnet18_asap', checkpoint_path=str(hub))  # as itself: built from config.json
    assert loaded.model.num_classes == 10 and loaded.mean.flatten().tolist() == pytest.approx([0.2])


def test_state_dict_that_records_nothing_loads_with_a_warning_and_its_own_counts(tmp_path, caplog):
    import timm
    from timm_asap_lab.evaluation import create_eval_model
    grey = timm.create_model('test_resnet', num_classes=10, in_chans=1)
    path = _plain_state_dict(grey, tmp_path / 'grey.pth.tar')
    with caplog.at_level('WARNING'):
        loaded = create_eval_model('test_resnet', checkpoint_path=str(path))  # neither num_classes nor in_chans
    assert 'records no architecture: could not check' in caplog.text and 'grey.pth.tar' in caplog.text
    assert loaded.model.num_classes == 10 and loaded.model.conv1[0].in_channels == 1
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in grey.state_dict().items())


def test_two_class_model_on_ten_class_fashion_mnist_is_refused(fmnist_run, tmp_path, capsys):
    rc, err = _evaluate(['--model', 'test_resnet', '--num-classes', '2', '--in-chans', '1', '--img-size', '28',
                         *_fmnist(fmnist_run[0])], tmp_path, capsys)
    assert rc == 2
    assert "has 10 classes ['T-shirt/top'" in err[-1] and "the class count of model 'test_resnet' is 2" in err[-1]


def test_ten_class_checkpoint_on_two_class_folder_is_refused(tmp_path, capsys):
    _folder(tmp_path / 'data', bad_names=())
    rc, err = _evaluate([*_grey_test_resnet(tmp_path), '--dataset', 'folder', '--data-dir', str(tmp_path / 'data'),
                         '--split', 'val'], tmp_path / 'out', capsys)
    assert rc == 2
    assert "has 2 classes ['cat', 'dog']" in err[-1] and "model 'test_resnet' is 10" in err[-1]


def test_checkpoint_whose_label_names_disagree_with_the_data_is_refused(tmp_path, capsys):
    import timm
    from finetune_helpers import TINY_ARGS, tiny_config
    from timm_asap_lab.config import save_config
    from timm_asap.hub import weights_metadata
    from timm_asap_lab.train.checkpoint import save_weights
    _folder(tmp_path / 'data', bad_names=())  # classes cat (label 0), dog (label 1)
    cfg = tiny_config(tmp_path / 'data', model={'num_classes': 2},
                      data={'dataset': 'folder', 'label_names': ['dog', 'cat']})
    run = tmp_path / 'run'
    model = timm.create_model('resnet18_cifar_asap', num_classes=2, in_chans=1, **TINY_ARGS)
    save_weights(model.state_dict(), run / 'model.safetensors', weights_metadata(model, 'resnet18_cifar_asap'))
    save_config(cfg, run / 'config.yaml')
    rc, err = _evaluate(['--model', f"resnet18_cifar_asap@{run}", '--dataset', 'folder', '--data-dir',
                         str(tmp_path / 'data'), '--split', 'val'], tmp_path / 'out', capsys)
    assert rc == 2
    assert "has class 'dog' as label 1, but model 'resnet18_cifar_asap' records it as label 0" in err[-1]


def test_run_folder_evaluates_to_its_own_validation_accuracy(fmnist_run, tmp_path, capsys):
    data, run = fmnist_run
    rc, err = _evaluate(['--model', f"preactresnet18_asap@{run}", *_fmnist(data)], tmp_path, capsys)
    assert rc == 0, err
    clean = next(r for r in json.loads((tmp_path / 'results.json').read_text())['rows'] if r['task'] == 'clean')
    metrics = json.loads((run / 'metrics.json').read_text())
    assert clean['count'] == 24 and clean['num_classes'] == 10
    assert clean['top1'] == pytest.approx(metrics['val_top1'])


def test_safetensors_of_a_run_is_built_with_its_recorded_model_args(fmnist_run, tmp_path, capsys):
    data, run = fmnist_run  # the command: model_args were never applied (a 114-line state-dict traceback)
    rc, err = _evaluate(['--model', f"preactresnet18_asap@{run / 'model.safetensors'}", '--num-classes', '10',
                         '--in-chans', '1', *_fmnist(data)], tmp_path, capsys)
    assert rc == 0, err
    config = yaml.safe_load((tmp_path / 'evaluate_config.yaml').read_text())
    assert config['in_chans'] == 1 and config['img_size'] == 28


def test_safetensors_outside_its_run_folder_brings_its_model_args(fmnist_run, tmp_path):
    import shutil
    from timm_asap_lab.evaluation import create_eval_model
    alone = shutil.copyfile(fmnist_run[1] / 'model.safetensors', tmp_path / 'model.safetensors')  # no config.yaml
    loaded = create_eval_model('preactresnet18_asap', checkpoint_path=str(alone))
    assert loaded.model.num_classes == 10 and loaded.model.stem.in_channels == 1
    assert loaded.model.stem.out_channels == PREACT_ARGS['stem_chs']


def test_run_config_applies_its_model_args(fmnist_run, tmp_path, capsys):
    import timm
    from timm_asap_lab.publish.export import load_checkpoint_state_dict
    data, run = fmnist_run
    model = timm.create_model('preactresnet18_asap', num_classes=10, in_chans=1, **PREACT_ARGS)
    model.load_state_dict(load_checkpoint_state_dict(run / 'model.safetensors'))
    plain = _plain_state_dict(model, tmp_path / 'plain.pth.tar')
    rc, err = _evaluate(['--model', f"preactresnet18_asap@{plain}", '--run-config', str(run / 'config.yaml'),
                         *_fmnist(data)], tmp_path / 'out', capsys)
    assert rc == 0, err
    clean = next(r for r in json.loads((tmp_path / 'out' / 'results.json').read_text())['rows'] if r['task'] == 'clean')
    assert clean['top1'] == pytest.approx(json.loads((run / 'metrics.json').read_text())['val_top1'])


def test_num_classes_contradicting_the_checkpoint_is_one_line(fmnist_run, tmp_path, capsys):
    rc, err = _evaluate(['--model', f"preactresnet18_asap@{fmnist_run[1] / 'model.safetensors'}", '--num-classes', '5',
                         *_fmnist(fmnist_run[0])], tmp_path, capsys)
    assert rc == 2 and err[-1].startswith('timm-asap-evaluate: error: ')
    assert 'num_classes=5' in err[-1] and 'holds a model with 10 classes' in err[-1]


def test_grey_checkpoint_without_in_chans_takes_its_channels(fmnist_run, tmp_path, capsys):
    rc, err = _evaluate(['--model', f"preactresnet18_asap@{fmnist_run[1] / 'best.pth'}", *_fmnist(fmnist_run[0])],
                        tmp_path, capsys)
    assert rc == 0, err
    assert yaml.safe_load((tmp_path / 'evaluate_config.yaml').read_text())['in_chans'] == 1


def test_rgb_mean_for_a_grey_model_is_one_line(fmnist_run, tmp_path, capsys):
    rc, err = _evaluate([*_grey_test_resnet(tmp_path), '--mean', '0.5', '0.5', '0.5', '--std', '0.2', '0.2', '0.2',
                         *_fmnist(fmnist_run[0])], tmp_path / 'out', capsys)
    assert rc == 2
    assert err[-1] == ('timm-asap-evaluate: error: mean has 3 values but the model takes 1 channels; '
                       'give one value')


def test_missing_checkpoint_names_the_file(fmnist_run, tmp_path, capsys):
    rc, err = _evaluate(['--model', f"preactresnet18_asap@{tmp_path / 'nope.pth'}", *_fmnist(fmnist_run[0])],
                        tmp_path, capsys)
    assert rc == 2
    assert err[-1] == (f"timm-asap-evaluate: error: {tmp_path / 'nope.pth'}: checkpoint not found (no such file or "
                       f"folder)")


def test_tensors_that_do_not_fit_the_model_are_one_line(fmnist_run, tmp_path, capsys):
    import timm
    narrow = timm.create_model('preactresnet18_asap', num_classes=10, in_chans=1, **PREACT_ARGS)
    plain = _plain_state_dict(narrow, tmp_path / 'narrow.pth.tar')  # records nothing: built at full width
    rc, err = _evaluate(['--model', f"preactresnet18_asap@{plain}", *_fmnist(fmnist_run[0])], tmp_path / 'o', capsys)
    assert rc == 2 and err[-1].startswith('timm-asap-evaluate: error: ')
    assert 'narrow.pth.tar: does not fit' in err[-1] and 'wrong shape: ' in err[-1] and 'fc.weight' in err[-1]


def _no_pass(monkeypatch):
    """Make any evaluation pass fail the test: the inputs must be refused before the first one."""
    import timm_asap_lab.evaluation.runner as runner

    def fail(*a, **k):
        raise AssertionError('an evaluation pass started before the inputs were checked')
    monkeypatch.setattr(runner, 'evaluate_clean', fail)
    monkeypatch.setattr(runner, 'evaluate_corruptions', fail)


def test_corruption_cache_naming_a_file_is_refused_before_any_pass(fmnist_run, tmp_path, capsys, monkeypatch):
    _no_pass(monkeypatch)
    (tmp_path / 'cache.txt').write_text('not a folder')
    rc, err = _evaluate([*_grey_test_resnet(tmp_path), *_fmnist(fmnist_run[0]), '--corruption-cache',
                         str(tmp_path / 'cache.txt'), '--corruptions', 'fog', '--severities', '1'], tmp_path / 'out',
                        capsys)
    assert rc == 2
    assert err[-1] == (f"timm-asap-evaluate: error: corruption_cache {tmp_path / 'cache.txt'} is a file, not a "
                       f"folder; name a folder (it is created when missing)")


def test_output_naming_a_file_is_refused_before_any_pass(fmnist_run, tmp_path, capsys, monkeypatch):
    _no_pass(monkeypatch)
    (tmp_path / 'out').write_text('not a folder')
    rc, err = _evaluate([*_grey_test_resnet(tmp_path), *_fmnist(fmnist_run[0])],
                        tmp_path / 'out', capsys)
    assert rc == 2 and f"--output {tmp_path / 'out'} is a file, not a folder" in err[-1]


def test_missing_pregenerated_corruption_is_refused_before_any_pass(fmnist_run, tmp_path, capsys, monkeypatch):
    _no_pass(monkeypatch)
    (tmp_path / 'cifar_c').mkdir()
    np.save(tmp_path / 'cifar_c' / 'labels.npy', np.zeros(5, dtype=np.int64))
    rc, err = _evaluate([*_grey_test_resnet(tmp_path), *_fmnist(fmnist_run[0]),
                         '--corruptions', 'fog', '--severities', '1', '--corruption-source', 'cifar_c',
                         '--corruption-dir', str(tmp_path / 'cifar_c')], tmp_path / 'out', capsys)
    assert rc == 2 and err[-1].endswith(f"CIFAR-C file not found: {tmp_path / 'cifar_c' / 'fog.npy'}")


def test_unknown_mce_baseline_is_refused_before_any_pass(fmnist_run, tmp_path, capsys, monkeypatch):
    _no_pass(monkeypatch)
    rc, err = _evaluate([*_grey_test_resnet(tmp_path), *_fmnist(fmnist_run[0]),
                         '--corruptions', 'fog', '--severities', '1', '--mce-baseline', 'resnet18'],
                        tmp_path / 'out', capsys)
    assert rc == 2
    assert "mCE baseline 'resnet18' is not a model of this run (['test_resnet'])" in err[-1]
