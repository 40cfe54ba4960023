"""Bad inputs to fine-tuning, its data and publishing: each gets a clear error naming what was wrong and
what is allowed (or, where the input is fine, the correct result)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import timm_asap.models  # noqa: F401  (registers the architectures)
from timm_asap_lab.cli.finetune import main as finetune_main
from timm_asap_lab.config import ConfigError, apply_overrides, config_from_dict
from timm_asap_lab.data import DataError, FashionMNIST, create_run_data
from timm_asap_lab.config_model import create_model_from_config
from timm_asap.layers import ASAP2d
from timm_asap_lab.train import CheckpointError, finetune

from conftest_hub import make_train_dir
from finetune_helpers import tiny_config, write_fake_fashion_mnist, write_image_folder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fmnist(tmp_path):
    return write_fake_fashion_mnist(tmp_path / 'fmnist', n_train=48, n_test=16)


def test_zero_epochs_is_refused_by_the_config_check():
    with pytest.raises(ConfigError, match=r"train.epochs: must be >= 1, got 0 \(a run without epochs would "
                                          r"export untrained weights\)"):
        config_from_dict({'train': {'epochs': 0}})


@pytest.mark.parametrize('key,value,allowed', [('data.loader', 'ram', "['auto', 'memory', 'dataloader']"),
                                               ('train.lr_base_scale', 'cube', "['linear', 'sqrt']")])
def test_new_choices_name_what_is_allowed(key, value, allowed):
    section, name = key.split('.')
    with pytest.raises(ConfigError, match=f"{key}: must be one of {allowed.replace('[', '.').replace(']', '.')}"):
        config_from_dict({section: {name: value}})


def test_resume_into_a_folder_without_a_run(tmp_path, fmnist, capsys):
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert finetune_main(['--output', str(empty), '--resume']) == 2
    err = capsys.readouterr().err
    assert f"there is no run to resume in {empty}" in err and 'shipped config' not in err
    with pytest.raises(CheckpointError, match=f"there is no run to resume in {empty}: it holds no last.pth"):
        finetune(tiny_config(fmnist), empty, resume=True, device='cpu', progress=False)


def test_failed_download_leaves_no_folder_and_gives_the_right_hint(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:  # what torchvision does without network: makes its folders, then fails
        def __init__(self, root, train=True, download=False):
            (Path(root) / 'FashionMNIST' / 'raw').mkdir(parents=True)
            raise RuntimeError('Error downloading train-images-idx3-ubyte.gz:\nTried the mirrors')

    monkeypatch.setattr(torchvision.datasets, 'FashionMNIST', Offline)
    target = tmp_path / 'not' / 'there'
    with pytest.raises(DataError) as e:
        FashionMNIST(str(target), split='train', download=True)
    msg = str(e.value)
    assert f"download into {target} failed (RuntimeError: Error downloading" in msg and 'Tried the mirrors' in msg
    assert 'allow data.download' not in msg and '\n' not in msg
    assert not (tmp_path / 'not').exists()
    existing = tmp_path / 'existing'
    existing.mkdir()
    with pytest.raises(DataError):
        FashionMNIST(str(existing), split='train', download=True)
    assert existing.is_dir() and not any(existing.iterdir())
    # with download off the hint offers it
    with pytest.raises(DataError, match='or allow data.download'):
        FashionMNIST(str(target), split='train', download=False)


def test_memory_loader_refuses_a_dataset_read_image_by_image(tmp_path):
    root = write_image_folder(tmp_path / 'folder', ['a', 'b'], per_class=8)
    cfg = tiny_config(root, model={'num_classes': 2}, data={'dataset': '', 'val_split': 'validation',
                                                            'loader': 'memory'})
    with pytest.raises(DataError, match=r"data.loader 'memory' needs datasets held as one uint8 array .* "
                                        r"use data.loader=dataloader"):
        create_run_data(cfg)
    assert create_run_data(apply_overrides(cfg, ['data.loader=auto'])).loader == 'dataloader'


def test_memory_loader_refuses_a_dataset_over_its_size_cap(fmnist, monkeypatch):
    cfg = tiny_config(fmnist, data={'loader': 'memory', 'memory_max_mb': 1})
    monkeypatch.setattr('timm_asap_lab.data.pipeline.images_nbytes', lambda images, c, n=None: 3 * 2 ** 20)
    with pytest.raises(DataError, match=r"data.loader 'memory': 'fashion_mnist' needs 6.0 MiB as uint8 \(48 "
                                        r"training images of 1x28x28 plus validation\), more than "
                                        r"data.memory_max_mb=1; use data.loader=dataloader"):
        create_run_data(cfg)
    assert create_run_data(apply_overrides(cfg, ['data.loader=auto'])).loader == 'dataloader'


def test_memory_loader_refuses_augmentations_it_does_not_implement(fmnist):
    cfg = tiny_config(fmnist, data={'loader': 'memory', 'reprob': 0.25})
    with pytest.raises(DataError, match=r"does not implement \['data.reprob'\] .* use data.loader=dataloader"):
        create_run_data(cfg)
    assert create_run_data(apply_overrides(cfg, ['data.loader=auto'])).loader == 'dataloader'


def test_crop_padding_needs_the_memory_loader(fmnist):
    cfg = tiny_config(fmnist, data={'loader': 'dataloader', 'crop_padding': 4})
    with pytest.raises(DataError, match=r"data.crop_padding=4: the padded random crop is offered by the in-memory "
                                        r"loader only \(data.loader=memory\)"):
        create_run_data(cfg)


def test_reference_mode_builds_in_training_and_export(fmnist):
    cfg = tiny_config(fmnist, model={'mode': 'reference'})
    for tagged in (True, False):
        model = create_model_from_config(cfg, pretrained_tag=tagged)
        assert {m.mode for m in model.modules() if isinstance(m, ASAP2d)} == {'reference'}
    with pytest.raises(ConfigError, match=r"model.architecture: unknown model 'resnet18_cifar_blur'"):
        create_model_from_config(apply_overrides(cfg, ['model.architecture=resnet18_cifar_blur']))


def test_fmnist_alias_works_in_evaluation(fmnist):
    from timm_asap_lab.evaluation.data import create_eval_dataset
    ds = create_eval_dataset('fmnist', str(fmnist), split='test', img_size=16, in_chans=1)
    assert isinstance(ds, FashionMNIST) and len(ds) == 16 and ds[0][0].shape == (1, 16, 16)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_publish_to_an_unreachable_hub_says_so_in_one_line(tmp_path):
    train = make_train_dir(tmp_path / 'train', small=True)
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_TOKEN='hf_not_a_real_token', HF_HUB_ETAG_TIMEOUT='2',
               HF_HUB_DOWNLOAD_TIMEOUT='2', HF_HUB_DISABLE_TELEMETRY='1', OMP_NUM_THREADS='1',
               HF_HOME=str(tmp_path / 'hf_home'))
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')])
    cmd = [sys.executable, '-m', 'timm_asap_lab.cli.publish', 'resnet18_cifar_asap.fmnist', '--checkpoint', str(train),
           '--allow-no-eval', '--output', str(tmp_path / 'hub')]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 3, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert f"cannot reach the Hub at {endpoint} while trying to identify the user" in lines[0]
    assert 'nothing was uploaded' in lines[0] and 'hf_not_a_real_token' not in proc.stderr + proc.stdout
    assert (tmp_path / 'hub' / 'model.safetensors').is_file()  # the folder is kept for a later upload


def test_memory_loader_on_cuda_keeps_to_half_the_free_memory(fmnist, monkeypatch):
    import torch
    from timm_asap_lab.data import choose_loader, create_split_dataset
    cfg = tiny_config(fmnist, data={'loader': 'memory'})
    train = create_split_dataset(cfg.data, 'train', in_chans=1)
    monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda device=None: (4 * 2 ** 20, 8 * 2 ** 20))
    monkeypatch.setattr('timm_asap_lab.data.pipeline.images_nbytes', lambda images, c, n=None: 3 * 2 ** 20)
    with pytest.raises(DataError, match=r"needs 3.0 MiB .* more than half the free memory of cuda \(2 MiB\); "
                                        r"use data.loader=dataloader"):
        choose_loader(cfg, train, device='cuda')
    assert choose_loader(apply_overrides(cfg, ['data.loader=auto']), train, device='cuda') == 'dataloader'
    assert choose_loader(cfg, train, device='cpu') == 'memory'
