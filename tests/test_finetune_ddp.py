"""Distributed data parallel: torchrun with 2 CPU processes (gloo) ends with identical weights on both ranks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from timm_asap_lab.config import save_config
from timm_asap_lab.train import finetune, load_run_checkpoint

from finetune_helpers import tiny_config, write_fake_fashion_mnist

WORKER = Path(__file__).with_name('finetune_worker.py')


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason='torch.distributed gloo missing')
def test_torchrun_two_cpu_processes_gloo(tmp_path):
    data = write_fake_fashion_mnist(tmp_path / 'data', n_train=48, n_test=20)
    cfg = tiny_config(data, train={'epochs': 2, 'batch_size': 6, 'export': 'last', 'log_interval': 2,
                                   'dist_bn': 'reduce'})
    cfg_path = save_config(cfg, tmp_path / 'cfg.yaml')
    out, dump = tmp_path / 'run', tmp_path / 'dump'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get('PYTHONPATH', '')])
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nnodes', '1', '--nproc_per_node', '2',
           str(WORKER), str(cfg_path), str(out), '--dump', str(dump)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    r0 = torch.load(dump / 'rank0.pt', weights_only=True)
    r1 = torch.load(dump / 'rank1.pt', weights_only=True)
    assert r0.keys() == r1.keys()
    for k in r0:  # parameters via DDP's gradient all-reduce, BatchNorm statistics via dist_bn='reduce'
        assert torch.equal(r0[k], r1[k]), k
    exported = load_file(out / 'model.safetensors')
    for k in exported:
        assert torch.equal(exported[k], r0[k]), k
    # 2 epochs x 4 optimizer updates (48 images / (2 ranks x 6))
    assert load_run_checkpoint(out / 'last.pth')['num_updates'] == 8

    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['status'] == 'finished' and metrics['world_size'] == 2
    # the two ranks share each epoch's 48 images: 4 batches of 6 each
    assert [row['train_images'] for row in metrics['history']] == [48, 48]
    # validation counts every one of the 20 test images once over both ranks
    assert all(0.0 <= row['val_top1'] <= 100.0 for row in metrics['history'])
    # only rank 0 writes: one log line per epoch, no stray files
    log = (out / 'train.log').read_text()
    assert log.count('epoch 1/2') == 1 and log.count('epoch 2/2') == 1
    assert sorted(p.name for p in out.iterdir()) == ['best.pth', 'config.yaml', 'last.pth', 'metrics.json',
                                                     'model.safetensors', 'summary.csv', 'train.log']


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason='torch.distributed gloo missing')
def test_two_process_run_resumed_by_one_process(tmp_path):
    """Preempted in epoch 2 of a 2-process run, continued by 1 process: the epoch goes on after the samples
    both ranks had seen, and the per-update schedule is that of a 1-process run from the same point."""
    data = write_fake_fashion_mnist(tmp_path / 'data', n_train=48, n_test=12)
    cfg = tiny_config(data, train={'epochs': 2, 'batch_size': 6, 'log_interval': 1, 'warmup_epochs': 1,
                                   'warmup_lr': 0.001})
    cfg_path = save_config(cfg, tmp_path / 'cfg.yaml')
    out = tmp_path / 'run'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get('PYTHONPATH', '')])
    # 4 updates per epoch with 2 processes: update 5 is the first batch of epoch 2
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nnodes', '1', '--nproc_per_node', '2',
           str(WORKER), str(cfg_path), str(out), '--kill-at', '5']
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and (out / 'last.pth').is_file(), proc.stdout[-2000:] + proc.stderr[-4000:]
    ckpt = load_run_checkpoint(out / 'last.pth')
    assert (ckpt['world_size'], ckpt['epoch'], ckpt['batches_done'], ckpt['num_updates']) == (2, 1, 1, 5)

    m = finetune(cfg, out, resume=True, device='cpu', progress=False)
    log = (out / 'train.log').read_text()
    assert 'continues after the 2 batches already seen (2 per process)' in log
    assert 'an epoch now has 8 optimizer updates instead of 4' in log
    assert m['status'] == 'finished' and m['world_size'] == 1 and m['epochs_completed'] == 2
    # 1 process: 8 updates per epoch; epoch 2 skipped the 12 images seen and ran the remaining 6 batches
    last = load_run_checkpoint(out / 'last.pth')
    assert last['num_updates'] == 16 and m['history'][1]['train_images'] == 48
