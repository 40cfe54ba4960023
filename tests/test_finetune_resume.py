"""Preemption: a run stopped by SIGTERM mid-epoch resumes to exactly the weights of an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from timm_asap_lab.config import save_config
from timm_asap_lab.train import TrainingInterrupted, finetune, load_run_checkpoint

from finetune_helpers import TINY_ARGS, tiny_config, write_fake_fashion_mnist


pytestmark = pytest.mark.usefixtures('one_thread')


WORKER = Path(__file__).with_name('finetune_worker.py')


def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get('PYTHONPATH', '')])
    return env


@pytest.mark.parametrize('loader', ['dataloader', 'memory'])
def test_sigterm_mid_epoch_then_resume_matches_uninterrupted(tmp_path, loader):
    data = write_fake_fashion_mnist(tmp_path / 'data', n_train=64, n_test=16)
    # randomness everywhere: augmentation, mixup/cutmix (NumPy), dropout (torch), EMA, label smoothing; the
    # in-memory loader draws its crops, shifts and flips on the device from (seed, epoch, rank, batch)
    augment = {'reprob': 0.25} if loader == 'dataloader' else {'crop_padding': 2}
    cfg = tiny_config(data, model={'model_args': dict(TINY_ARGS, drop_rate=0.2)},
                      data={'hflip': 0.5, 'loader': loader, **augment},
                      train={'epochs': 2, 'mixup': 0.2, 'cutmix': 1.0, 'model_ema': True, 'model_ema_decay': 0.9,
                             'export': 'last', 'label_smoothing': 0.1, 'warmup_epochs': 1})
    cfg_path = save_config(cfg, tmp_path / 'cfg.yaml')
    run = tmp_path / 'run'
    # 8 batches per epoch: update 11 is the 3rd batch of epoch 2
    proc = subprocess.run([sys.executable, str(WORKER), str(cfg_path), str(run), '--kill-at', '11',
                           '--threads', str(torch.get_num_threads())],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + 15, proc.stderr[-3000:]
    ckpt = load_run_checkpoint(run / 'last.pth')
    assert (ckpt['epoch'], ckpt['batches_done'], ckpt['num_updates']) == (1, 3, 11)
    assert len(ckpt['history']) == 1
    status = json.loads((run / 'metrics.json').read_text())
    assert status['status'] == 'interrupted' and 'SIGTERM' in status['error']
    assert not (run / 'model.safetensors').exists()

    resumed = finetune(cfg, run, resume=True, device='cpu', progress=False)
    reference = finetune(cfg, tmp_path / 'ref', device='cpu', progress=False)

    a = load_file(run / 'model.safetensors')
    b = load_file(tmp_path / 'ref' / 'model.safetensors')
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ema_a = load_run_checkpoint(run / 'last.pth')['state_dict_ema']
    ema_b = load_run_checkpoint(tmp_path / 'ref' / 'last.pth')['state_dict_ema']
    for k in ema_a:
        assert torch.equal(ema_a[k], ema_b[k]), k
    assert resumed['loader'] == reference['loader'] == loader
    for ra, rb in zip(resumed['history'], reference['history']):
        for key in ('train_loss', 'val_loss', 'val_top1', 'val_ema_top1', 'lr', 'train_images'):
            assert ra[key] == rb[key], key
    assert resumed['status'] == 'finished' and resumed['epochs_completed'] == 2


def _record_lrs(monkeypatch) -> list[float]:
    """The learning rate of every optimizer step of the runs that follow (wraps timm's optimizer factory)."""
    import timm_asap_lab.train.build as build_module
    lrs: list[float] = []
    create = build_module.create_optimizer_v2

    def create_recording(*args, **kwargs):
        opt = create(*args, **kwargs)
        step = opt.step

        def recording_step(*a, **k):
            lrs.append(opt.param_groups[0]['lr'])
            return step(*a, **k)
        opt.step = recording_step
        return opt
    monkeypatch.setattr(build_module, "create_optimizer_v2", create_recording)
    return lrs


def _stop_at(update: int):
    def callback(state):
        if state.num_updates == update:
            os.kill(os.getpid(), signal.SIGTERM)
    return callback


def _reference_then_interrupted(tmp_path, monkeypatch, cfg, interrupted=None):
    """The learning rate of every update of an uninterrupted run of ``cfg`` (8 updates per epoch), then a run
    of ``interrupted`` (default ``cfg``) stopped by SIGTERM after update 11, the 3rd of epoch 2. Returns the
    reference rates, the live list recording the rates of later runs (emptied) and the stopped run's folder."""
    lrs = _record_lrs(monkeypatch)
    finetune(cfg, tmp_path / 'ref', device='cpu', progress=False)
    reference = list(lrs)
    assert len(reference) == 16
    run = tmp_path / 'run'
    with pytest.raises(TrainingInterrupted):
        finetune(interrupted or cfg, run, device='cpu', progress=False, callbacks=[_stop_at(11)])
    lrs[:] = []
    return reference, lrs, run


def test_resume_with_another_world_size_continues_the_epoch_on_this_runs_schedule(tmp_path, monkeypatch):
    """A checkpoint of a 2-process run (4 batches of 8 per process and epoch) resumed by 1 process (8 batches)."""
    data = write_fake_fashion_mnist(tmp_path / 'data', n_train=64, n_test=16)
    cfg = tiny_config(data, train={'epochs': 2, 'warmup_epochs': 1, 'warmup_lr': 0.001})
    reference, lrs, run = _reference_then_interrupted(tmp_path, monkeypatch, cfg)
    ckpt = load_run_checkpoint(run / 'last.pth')
    # as the 2-process run would have saved it: 1 batch per process into epoch 2, 4 + 1 updates
    ckpt.update(world_size=2, batches_per_epoch=4, batches_done=1, num_updates=5, rng=ckpt['rng'] * 2)
    torch.save(ckpt, run / 'last.pth')
    resumed = finetune(cfg, run, resume=True, device='cpu', progress=False)
    text = (run / 'train.log').read_text()
    assert 'continues after the 2 batches already seen (2 per process)' in text
    assert 'an epoch now has 8 optimizer updates instead of 4' in text
    assert lrs == reference[10:]  # updates 11..16 at the rates of an uninterrupted 1-process run
    assert load_run_checkpoint(run / 'last.pth')['num_updates'] == 16
    assert resumed['status'] == 'finished' and resumed['epochs_completed'] == 2


def test_resume_with_a_changed_schedule_uses_it_from_the_first_update(tmp_path, monkeypatch):
    data = write_fake_fashion_mnist(tmp_path / 'data', n_train=64, n_test=16)
    cfg = tiny_config(data, train={'epochs': 2})
    slow = tiny_config(data, train={'epochs': 2, 'lr': 0.01})
    reference, lrs, run = _reference_then_interrupted(tmp_path, monkeypatch, cfg, interrupted=slow)
    finetune(cfg, run, resume=True, device='cpu', progress=False)
    assert lrs == reference[11:]


def test_resume_into_another_folder_brings_best_pth_along(tmp_path):
    data = write_fake_fashion_mnist(tmp_path / 'data', n_train=32, n_test=16)
    cfg = tiny_config(data, train={'epochs': 1, 'export': 'best'})
    longer = tiny_config(data, train={'epochs': 2, 'export': 'best'})
    first = tmp_path / 'a'
    finetune(cfg, first, device='cpu', progress=False)
    m = finetune(longer, tmp_path / 'b', resume=first / 'last.pth', device='cpu', progress=False)
    assert m['status'] == 'finished' and (tmp_path / 'b' / 'best.pth').is_file()
    assert m['export']['epoch'] == m['best_epoch'] and m['best_epoch'] in (1, 2)
    # without the old folder's best.pth the best epoch is chosen among the resumed run's epochs
    (first / 'best.pth').unlink()
    m = finetune(longer, tmp_path / 'c', resume=first / 'last.pth', device='cpu', progress=False)
    assert m['status'] == 'finished' and m['best_epoch'] == 2 and m['export']['epoch'] == 2


def test_restarted_epoch_counts_updates_from_its_start(tmp_path, monkeypatch):
    """Another sample order (here the seed) restarts the interrupted epoch: its updates are not counted twice."""
    data = write_fake_fashion_mnist(tmp_path / 'data', n_train=64, n_test=16)
    cfg = tiny_config(data, train={'epochs': 2})
    reference, lrs, run = _reference_then_interrupted(tmp_path, monkeypatch, cfg)
    m = finetune(tiny_config(data, train={'epochs': 2, 'seed': 8}), run, resume=True, device='cpu', progress=False)
    assert 'train.seed changed: the interrupted epoch restarts' in (run / 'train.log').read_text()
    assert lrs == reference[8:] and load_run_checkpoint(run / 'last.pth')['num_updates'] == 16
    assert m['history'][1]['train_images'] == 64
