"""Fine-tuning library: outputs, zero-shot conversion, distillation, recipe features and bad input."""
from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

import timm_asap.models  # noqa: F401  (registers the architectures)
from timm_asap_lab.config import ConfigError, apply_overrides
from timm_asap_lab.data import DataError
from timm_asap_lab.train import (
    CheckpointError, NonFiniteLossError, RunExistsError, TrainingInterrupted, config_differences, ensure_finetuned,
    finetune, load_run_checkpoint)

from finetune_helpers import (
    TINY_ARGS, class_images, tiny_config, write_fake_fashion_mnist, write_image_folder)


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def fmnist(tmp_path_factory):
    return write_fake_fashion_mnist(tmp_path_factory.mktemp('fmnist'), n_train=48, n_test=16)


def _run(cfg, out, **kw):
    return finetune(cfg, out, device='cpu', progress=False, **kw)


def _base_file(tmp_path, arch='resnet18_cifar', num_classes=10, seed=1):
    torch.manual_seed(seed)
    base = timm.create_model(arch, num_classes=num_classes, in_chans=1, **TINY_ARGS)
    path = tmp_path / f'{arch}_{num_classes}.safetensors'
    save_file(base.state_dict(), path)
    return path, base


def test_outputs_of_a_run(tmp_path, fmnist):
    cfg = tiny_config(fmnist)
    out = tmp_path / 'run'
    m = _run(cfg, out)
    names = sorted(p.name for p in out.iterdir())
    assert names == ['best.pth', 'config.yaml', 'last.pth', 'metrics.json', 'model.safetensors', 'summary.csv',
                     'train.log']
    assert m['status'] == 'finished' and m['epochs_completed'] == 2
    assert m == json.loads((out / 'metrics.json').read_text())
    assert m['best_metric_name'] == 'val_top1' and m['best_epoch'] in (1, 2)
    assert m['best_metric'] == max(r['val_top1'] for r in m['history'])
    for row in m['history']:
        assert 0 <= row['val_top1'] <= row['val_top5'] <= 100 and row['train_images'] == 48
        assert row['train_images_per_sec'] > 0 and row['val_loss'] > 0
    # summary.csv: one row per epoch
    rows = list(csv.DictReader((out / 'summary.csv').open()))
    assert [int(r['epoch']) for r in rows] == [1, 2] and 'val_top1' in rows[0] and 'lr' in rows[0]
    # the resolved config: the run's config plus the label names read from the data
    saved = yaml.safe_load((out / 'config.yaml').read_text())
    assert saved['data']['label_names'][0] == 'T-shirt/top'
    assert config_differences(saved, cfg, ignore=['data.label_names']) == {}
    # per-epoch lines in the log
    log = (out / 'train.log').read_text()
    assert 'epoch 1/2 | train loss' in log and 'img/s' in log
    # model.safetensors: weights only, of the best epoch, loadable straight into the registered model
    weights = load_file(out / 'model.safetensors')
    best = load_run_checkpoint(out / 'best.pth')
    assert best['epoch'] == m['best_epoch']
    for k, v in best['state_dict'].items():
        assert torch.equal(weights[k], v), k
    model = timm.create_model('resnet18_cifar_asap', num_classes=10, in_chans=1, **TINY_ARGS)
    model.load_state_dict(weights, strict=True)
    assert m['export'] == {'kind': 'best', 'epoch': m['best_epoch'], 'file': 'model.safetensors'}
    # its header records the architecture, the pooling and the data digest the checked loaders compare
    from timm_asap.hub.integrity import DIGEST_KEY, load_safetensors, read_safetensors_header, weights_metadata
    header = read_safetensors_header(out / 'model.safetensors')[1]
    assert weights_metadata(model, 'resnet18_cifar_asap').items() <= header.items() and DIGEST_KEY in header
    assert load_safetensors(out / 'model.safetensors').keys() == weights.keys()


def test_zero_shot_conversion_loads_the_base_weights(tmp_path, fmnist):
    """A fresh run's model holds exactly the base resnet18_cifar's weights before training."""
    from timm_asap_lab.train import convert_from_base, create_model_from_config, load_base_model
    path, base = _base_file(tmp_path)
    cfg = tiny_config(fmnist, model={'base': 'resnet18_cifar', 'base_file': str(path)}, train={'epochs': 1})
    model = create_model_from_config(cfg)
    m = cfg.model
    convert_from_base(model, load_base_model(m.base, m.num_classes, m.in_chans, m.base_file, m.model_args))
    weights, ref = model.state_dict(), base.state_dict()
    assert weights.keys() == ref.keys()
    for k in ref:
        assert torch.equal(weights[k], ref[k]), k
    # epochs 0 would export these untrained weights as a finished model: refused in the config check
    with pytest.raises(ConfigError, match=r"train.epochs: must be >= 1, got 0 \(a run without epochs"):
        apply_overrides(cfg, ['train.epochs=0'])
    # a base that does not fit the architecture is named in the error
    bad, _ = _base_file(tmp_path, arch='resnet18_cifar', num_classes=10, seed=2)
    cfg_bad = apply_overrides(cfg, ["model.model_args={layers: [1, 1, 1, 1], channels: [8, 16, 32, 32]}"])
    with pytest.raises(ConfigError, match="base model 'resnet18_cifar'"):
        _run(cfg_bad, tmp_path / 'bad')


def test_distillation_from_the_base_model(tmp_path, fmnist):
    path, _ = _base_file(tmp_path)
    cfg = tiny_config(fmnist, model={'base': 'resnet18_cifar', 'base_file': str(path)},
                      train={'epochs': 1, 'distill': {'enabled': True, 'alpha': 0.5, 'temperature': 2.0}})
    m = _run(cfg, tmp_path / 'run')
    row = m['history'][0]
    assert 0 <= row['val_teacher_agree'] <= 100 and 'val_top1' in row
    assert m['best_metric_name'] == 'val_top1'
    # a teacher trained for other classes would give meaningless logits
    path5, _ = _base_file(tmp_path, num_classes=5)
    with pytest.raises(ConfigError, match='trained for 5 classes, model.num_classes is 10'):
        _run(apply_overrides(cfg, [f'model.base_file={path5}']), tmp_path / 'bad')
    with pytest.raises(ConfigError, match='needs a teacher'):
        _run(apply_overrides(cfg, ["model.base=''", "model.base_file=''"]), tmp_path / 'bad2')


def test_teacher_only_distillation_on_unlabelled_images(tmp_path):
    """alpha=1: labels are ignored, so a folder of unlabelled images works; best = teacher agreement."""
    root = tmp_path / 'unlabelled'
    for split in ('train', 'validation'):  # images straight in the split folder: no class sub-folders
        (root / split).mkdir(parents=True)
        for i, img in enumerate(class_images(np.arange(24) % 10, size=12, seed=len(split))):
            Image.fromarray(img).save(root / split / f'{i:03d}.png')
    path, _ = _base_file(tmp_path)
    cfg = tiny_config(root, model={'base': 'resnet18_cifar', 'base_file': str(path)},
                      data={'dataset': '', 'val_split': 'validation'},
                      train={'epochs': 1, 'distill': {'enabled': True, 'alpha': 1.0}})
    m = _run(cfg, tmp_path / 'run')
    row = m['history'][0]
    assert 'val_top1' not in row and 0 <= row['val_teacher_agree'] <= 100
    assert m['best_metric_name'] == 'val_teacher_agree' and m['best_metric'] == row['val_teacher_agree']


def test_recipe_mixup_cutmix_ema_accumulation_clip(tmp_path, fmnist):
    cfg = tiny_config(fmnist, train={'epochs': 1, 'mixup': 0.4, 'cutmix': 1.0, 'model_ema': True,
                                     'model_ema_decay': 0.5, 'grad_accum_steps': 4, 'clip_grad': 1.0,
                                     'export': 'ema', 'opt': 'adamw', 'lr': 1e-3, 'sched': 'step',
                                     'decay_epochs': 1})
    m = _run(cfg, tmp_path / 'run')
    row = m['history'][0]
    assert 'val_ema_top1' in row and m['best_metric_name'] == 'val_ema_top1'
    ckpt = load_run_checkpoint(tmp_path / 'run' / 'last.pth')
    assert ckpt['num_updates'] == 2  # 6 batches, 4 per update: 4 + the remaining 2
    weights = load_file(tmp_path / 'run' / 'model.safetensors')
    for k, v in ckpt['state_dict_ema'].items():
        assert torch.equal(weights[k], v), k
    assert any(not torch.equal(weights[k], v) for k, v in ckpt['state_dict'].items())
    assert m['export']['kind'] == 'ema'


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, fmnist):
    cfg = tiny_config(fmnist, train={'epochs': 2, 'log_interval': 100})

    def poison(state):
        if state.epoch == 1 and state.batches_done == 2:
            with torch.no_grad():
                state.model.fc.weight.fill_(float('nan'))

    out = tmp_path / 'run'
    with pytest.raises(NonFiniteLossError, match=r'NaN/Inf in epoch 2 .*last good one is .*last\.pth \(epoch 1\)'):
        _run(cfg, out, callbacks=[poison])
    ckpt = load_run_checkpoint(out / 'last.pth')
    assert ckpt['epoch'] == 1 and ckpt['batches_done'] == 0
    assert all(torch.isfinite(v).all() for v in ckpt['state_dict'].values() if v.is_floating_point())
    status = json.loads((out / 'metrics.json').read_text())
    assert status['status'] == 'failed' and 'NonFiniteLossError' in status['error']
    assert not (out / 'model.safetensors').exists()


def test_resume_checks(tmp_path, fmnist):
    cfg = tiny_config(fmnist, train={'epochs': 1})
    out = tmp_path / 'run'
    _run(cfg, out)
    with pytest.raises(RunExistsError, match='already holds a run'):
        _run(cfg, out)
    # a checkpoint of another architecture
    other = apply_overrides(cfg, ['model.architecture=resnet18_cifar_flc', 'model.pool=flc'])
    with pytest.raises(CheckpointError, match=r"another model: architecture 'resnet18_cifar_asap'.*"
                                              r"this run builds 'resnet18_cifar_flc'"):
        _run(other, tmp_path / 'other', resume=out / 'last.pth')
    # plain weights are not a training checkpoint
    with pytest.raises(CheckpointError, match='not a timm-asap fine-tuning checkpoint'):
        _run(cfg, tmp_path / 'w', resume=out / 'model.safetensors')
    torch.save({'state_dict': {}}, tmp_path / 'plain.pth')
    with pytest.raises(CheckpointError, match='not a timm-asap fine-tuning checkpoint'):
        _run(cfg, tmp_path / 'w', resume=tmp_path / 'plain.pth')
    with pytest.raises(CheckpointError, match='there is no run to resume in .*empty: it holds no last.pth'):
        _run(cfg, tmp_path / 'empty', resume=True)
    # resuming a finished run trains nothing more; a longer schedule continues it
    again = _run(cfg, out, resume=True)
    assert again['epochs_completed'] == 1 and again['status'] == 'finished'
    longer = _run(apply_overrides(cfg, ['train.epochs=2']), out, resume='auto')
    assert longer['epochs_completed'] == 2 and [r['epoch'] for r in longer['history']] == [1, 2]


def test_ensure_finetuned_returns_a_finished_run_without_training(tmp_path, fmnist, monkeypatch):
    cfg = tiny_config(fmnist, train={'epochs': 1})
    out = tmp_path / 'run'
    first = ensure_finetuned(cfg, out, device='cpu', progress=False)
    stamp = (out / 'model.safetensors').stat().st_mtime_ns
    import timm_asap_lab.train.trainer as ft
    monkeypatch.setattr(ft, 'finetune', lambda *a, **k: pytest.fail('trained again'))
    second = ensure_finetuned(apply_overrides(cfg, ['data.workers=1', 'train.log_interval=7']), out)
    assert second == first and (out / 'model.safetensors').stat().st_mtime_ns == stamp
    with pytest.raises(RunExistsError, match="another configuration .*train.lr: 0.05 vs 0.1"):
        ensure_finetuned(apply_overrides(cfg, ['train.lr=0.1']), out)
    monkeypatch.undo()
    # an interrupted/unfinished folder is resumed, not restarted
    ckpt = load_run_checkpoint(out / 'last.pth')
    (out / 'metrics.json').unlink()
    resumed = ensure_finetuned(apply_overrides(cfg, ['train.epochs=2']), out, device='cpu', progress=False)
    assert resumed['epochs_completed'] == 2 and resumed['history'][0] == ckpt['history'][0]


def test_bad_data_and_model_settings(tmp_path, fmnist):
    root = write_image_folder(tmp_path / 'three', ['a', 'b', 'c'], per_class=8)
    cfg = tiny_config(root, data={'dataset': '', 'val_split': 'validation'}, train={'epochs': 1})
    with pytest.raises(DataError, match=r"has 3 classes .* model.num_classes is 10"):
        _run(cfg, tmp_path / 'r1')
    with pytest.raises(DataError, match='is empty'):
        (tmp_path / 'empty').mkdir()
        _run(apply_overrides(cfg, [f"data.data_dir={tmp_path / 'empty'}"]), tmp_path / 'r2')
    with pytest.raises(ConfigError, match="model.pool: 'none', but 'resnet18_cifar_asap' contains"):
        _run(tiny_config(fmnist, model={'pool': 'none'}), tmp_path / 'r3')
    with pytest.raises(ConfigError, match="unknown model 'resnet18_cifar_blur'"):
        _run(tiny_config(fmnist, model={'architecture': 'resnet18_cifar_blur'}), tmp_path / 'r4')
    with pytest.raises(ConfigError, match="train.opt 'sgdx'"):
        _run(tiny_config(fmnist, train={'opt': 'sgdx'}), tmp_path / 'r5')
    with pytest.raises(ConfigError, match="model.mode: 'reference', but 'resnet18_cifar_asap'"):
        _run(tiny_config(fmnist, model={'mode': 'reference', 'model_args': {**TINY_ARGS, 'pool_mode': 'centered'}}),
             tmp_path / 'r6')


def test_unreadable_training_images(tmp_path):
    root = write_image_folder(tmp_path / 'data', ['a', 'b'], per_class=12)
    (root / 'train' / 'a' / '0003.png').write_bytes(b'broken')
    cfg = tiny_config(root, model={'num_classes': 2}, data={'dataset': '', 'val_split': 'validation',
                                                            'max_unreadable': 0.1}, train={'epochs': 1})
    m = _run(cfg, tmp_path / 'ok')
    assert m['history'][0]['train_unreadable'] == 1 and m['history'][0]['val_unreadable'] == 0
    assert 'skipped 1 unreadable training' in (tmp_path / 'ok' / 'train.log').read_text()
    with pytest.raises(DataError, match=r'1 unreadable training images in epoch 1, more than data.max_unreadable=0.0'):
        _run(apply_overrides(cfg, ['data.max_unreadable=0']), tmp_path / 'strict')
    assert json.loads((tmp_path / 'strict' / 'metrics.json').read_text())['status'] == 'failed'


def test_tensorboard_scalars(tmp_path, fmnist):
    pytest.importorskip('tensorboard')
    _run(tiny_config(fmnist, train={'epochs': 2, 'tensorboard': True}), tmp_path / 'run')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / 'run' / 'tensorboard'))
    acc.Reload()
    tags = acc.Tags()['scalars']
    assert {'train_loss', 'val_top1', 'lr', 'train_images_per_sec'} <= set(tags)
    assert [e.step for e in acc.Scalars('val_top1')] == [1, 2]


class _Stream(torch.utils.data.IterableDataset):
    """A streaming dataset in the manner of timm's readers: owns its order and applies ``transform``."""

    def __init__(self, n):
        labels = np.arange(n) % 10
        self.items = list(zip(class_images(labels, size=16), labels))
        self.transform = None

    def __len__(self):
        return len(self.items)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        for img, label in self.items:
            yield self.transform(Image.fromarray(img)), int(label)


def test_streaming_dataset_trains_and_resumes(tmp_path, fmnist, monkeypatch):
    import timm_asap_lab.data.pipeline as pipeline
    monkeypatch.setattr(pipeline, 'create_split_dataset',
                        lambda cfg, split, **kw: _Stream(32 if split == 'train' else 8))
    cfg = tiny_config(fmnist, data={'no_aug': True}, train={'epochs': 2, 'export': 'last'})

    def stop(state):
        if state.num_updates == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        _run(cfg, tmp_path / 'run', callbacks=[stop])
    assert load_run_checkpoint(tmp_path / 'run' / 'last.pth')['batches_done'] == 2
    resumed = _run(cfg, tmp_path / 'run', resume=True)
    reference = _run(cfg, tmp_path / 'ref')
    assert resumed['history'][1]['train_loss'] == reference['history'][1]['train_loss']
    a, b = (load_file(tmp_path / d / 'model.safetensors') for d in ('run', 'ref'))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_stop_request_checks_the_loss_before_writing_on_cuda():
    """On CUDA the loss is read every log_interval updates; a signal between two reads must not save NaN weights."""
    from types import SimpleNamespace
    from timm_asap_lab.train.loop import EpochLoop
    loop = SimpleNamespace(
        cfg=SimpleNamespace(train=SimpleNamespace(log_interval=50, lr=0.1), data=SimpleNamespace(max_unreadable=0.0)),
        env=SimpleNamespace(distributed=False), signals=SimpleNamespace(signum=signal.SIGTERM), cuda=True,
        p=SimpleNamespace(num_updates=9, history=[]), out=Path('run'),
        parts=SimpleNamespace(batches_per_epoch=12, data=SimpleNamespace(train_size=96)))
    with pytest.raises(NonFiniteLossError, match='NaN/Inf in epoch 1'):
        EpochLoop.sync_point(loop, torch.tensor(float('nan')), 0, force=False, epoch=0, batch=9)
    assert EpochLoop.sync_point(loop, torch.tensor(1.0), 0, force=False, epoch=0, batch=9) is True
    loop.signals.signum = None  # no stop, not periodic: the loss is not read (no device sync)
    assert EpochLoop.sync_point(loop, torch.tensor(float('nan')), 0, force=False, epoch=0, batch=9) is False


def test_validation_gives_the_teacher_its_own_normalisation(tmp_path, fmnist, monkeypatch):
    """A teacher with other mean/std sees the same re-normalised input in training and in validation."""
    import timm_asap_lab.train.build as build_module
    from timm_asap_lab.train.model import BaseModel
    seen: list[float] = []  # the smallest input value of each call

    class Teacher(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = timm.create_model('resnet18_cifar', num_classes=10, in_chans=1, **TINY_ARGS)
            self.pretrained_cfg = {'mean': (0.8,), 'std': (0.1,)}

        def forward(self, x):
            seen.append(float(x.min()))
            return self.net(x)

    monkeypatch.setattr(build_module, 'create_teacher',
                        lambda cfg, base=None: BaseModel(Teacher().eval(), 'other', 10, True))
    path, _ = _base_file(tmp_path)
    cfg = tiny_config(fmnist, model={'base': 'resnet18_cifar', 'base_file': str(path)},
                      data={'no_aug': True},
                      train={'epochs': 1, 'distill': {'enabled': True, 'alpha': 0.5, 'teacher': 'other'}})
    _run(cfg, tmp_path / 'run')
    # 6 training batches, then 2 validation batches; black pixels are (0 - 0.8) / 0.1 = -8 for the teacher
    # ((0 - 0.2) / 0.3 = -0.67 with the student's normalisation)
    assert len(seen) == 8 and all(v < -7.5 for v in seen), seen


def test_imagenet_folder_names_are_not_taken_as_label_names():
    from timm_asap_lab.train.build import _imagenet_synsets
    synsets = [f"n{i:08d}" for i in range(1000)]
    assert _imagenet_synsets(synsets)
    assert not _imagenet_synsets(synsets[:10])  # another class count: the folder names are the names
    assert not _imagenet_synsets(synsets[:-1] + ['tench'])


def test_ema_added_on_resume_chooses_the_best_epoch_again(tmp_path, fmnist):
    cfg = tiny_config(fmnist, train={'epochs': 1, 'export': 'best'})
    out = tmp_path / 'run'
    _run(cfg, out)
    with_ema = apply_overrides(cfg, ['train.epochs=2', 'train.model_ema=true'])
    m = _run(with_ema, out, resume=True)
    assert m['best_metric_name'] == 'val_ema_top1' and m['best_epoch'] == 2
    assert m['best_metric'] == m['history'][1]['val_ema_top1'] and m['export'] == {
        'kind': 'best', 'epoch': 2, 'file': 'model.safetensors'}


def test_any_training_failure_is_recorded(tmp_path, fmnist):
    def broken(state):
        raise RuntimeError('device lost')
    out = tmp_path / 'run'
    with pytest.raises(RuntimeError, match='device lost'):
        _run(tiny_config(fmnist, train={'epochs': 1}), out, callbacks=[broken])
    status = json.loads((out / 'metrics.json').read_text())
    assert status['status'] == 'failed' and status['error'] == 'RuntimeError: device lost'
    # a resume that fails before training leaves the run's records as they were
    done = tmp_path / 'done'
    cfg = tiny_config(fmnist, train={'epochs': 1})
    _run(cfg, done)
    with pytest.raises(CheckpointError, match='optimizer state does not fit'):
        _run(apply_overrides(cfg, ['train.opt=adamw']), done, resume=True)
    status = json.loads((done / 'metrics.json').read_text())
    assert status['status'] == 'finished' and status['epochs_completed'] == 1
