"""Bad inputs of the evaluation and the study: each gives a clear error or a correct, counted result."""
import json

import pytest
import torch
from PIL import Image
from torch import nn

from timm_asap.evaluation import EvalOptions, create_eval_dataset, evaluate_models, load_images, wrap_model
from timm_asap.study import PRESETS, StudyOptions, check_device, preset_options


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
    from timm_asap.cli.study import main
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
    from timm_asap.evaluation import create_eval_model
    from timm_asap.hub import IntegrityError, weights_metadata
    from timm_asap.train.checkpoint import save_weights
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
    from timm_asap.cli.evaluate import main
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'empty-cache'))
    rc = main(['--model', 'resnet18_asap.tv_in1k_base', '--pretrained', '--dataset', 'fashion_mnist',
               '--corruptions', 'none', '--count', '8', '--output', str(tmp_path / 'out')])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 3
    assert 'timm/resnet18.tv_in1k' in err and 'HF_HUB_OFFLINE=1' in err and 'empty-cache' in err
