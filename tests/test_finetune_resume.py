"""Preemption: a run stopped by SIGTERM mid-epoch resumes to exactly the weights of an uninterrupted run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from timm_asap.config import save_config
from timm_asap.train import finetune, load_checkpoint

from finetune_helpers import TINY_ARGS, tiny_config, write_fake_fashion_mnist


pytestmark = pytest.mark.usefixtures('one_thread')


WORKER = Path(__file__).with_name('finetune_worker.py')


def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get('PYTHONPATH', '')])
    return env


def test_sigterm_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    data = write_fake_fashion_mnist(tmp_path / 'data', n_train=64, n_test=16)
    # randomness everywhere: augmentation, mixup/cutmix (NumPy), dropout (torch), EMA, label smoothing
    cfg = tiny_config(data, model={'model_args': dict(TINY_ARGS, drop_rate=0.2)},
                      data={'hflip': 0.5, 'reprob': 0.25},
                      train={'epochs': 2, 'mixup': 0.2, 'cutmix': 1.0, 'model_ema': True, 'model_ema_decay': 0.9,
                             'export': 'last', 'label_smoothing': 0.1, 'warmup_epochs': 1})
    cfg_path = save_config(cfg, tmp_path / 'cfg.yaml')
    run = tmp_path / 'run'
    # 8 batches per epoch: update 11 is the 3rd batch of epoch 2
    proc = subprocess.run([sys.executable, str(WORKER), str(cfg_path), str(run), '--kill-at', '11',
                           '--threads', str(torch.get_num_threads())],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + 15, proc.stderr[-3000:]
    ckpt = load_checkpoint(run / 'last.pth')
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
    ema_a = load_checkpoint(run / 'last.pth')['state_dict_ema']
    ema_b = load_checkpoint(tmp_path / 'ref' / 'last.pth')['state_dict_ema']
    for k in ema_a:
        assert torch.equal(ema_a[k], ema_b[k]), k
    for ra, rb in zip(resumed['history'], reference['history']):
        for key in ('train_loss', 'val_loss', 'val_top1', 'val_ema_top1', 'lr', 'train_images'):
            assert ra[key] == rb[key], key
    assert resumed['status'] == 'finished' and resumed['epochs_completed'] == 2
