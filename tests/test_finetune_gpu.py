"""Training paths only CUDA takes: bf16 autocast, fp16 with the grad scaler, channels_last (on other devices
training runs in float32 and ignores channels_last); and torch.compile, too slow on the CPU for the default run.
Skipped without a GPU; tests that run on both devices take the ``device`` fixture (tests/conftest.py)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from timm_asap_lab.train import finetune, load_run_checkpoint

from finetune_helpers import tiny_config, write_fake_fashion_mnist

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')]


@pytest.fixture(scope='module')
def fmnist(tmp_path_factory):
    return write_fake_fashion_mnist(tmp_path_factory.mktemp('fmnist'), n_train=64, n_test=32)


@pytest.mark.parametrize('loader', ['memory', 'dataloader'])
@pytest.mark.parametrize('amp_dtype', ['bfloat16', 'float16'])
def test_amp_channels_last(tmp_path, fmnist, amp_dtype, loader):
    cfg = tiny_config(fmnist, model={'img_size': 32}, data={'workers': 2, 'loader': loader},
                      train={'epochs': 2, 'amp_dtype': amp_dtype, 'channels_last': True, 'model_ema': True})
    m = finetune(cfg, tmp_path / 'run', device='cuda', progress=False)
    assert m['amp'] == amp_dtype and m['channels_last'] is True and m['device'].startswith('cuda')
    assert m['loader'] == loader
    ckpt = load_run_checkpoint(tmp_path / 'run' / 'last.pth')
    assert (ckpt['scaler'] is not None) == (amp_dtype == 'float16')
    weights = load_file(tmp_path / 'run' / 'model.safetensors')
    assert all(v.dtype in (torch.float32, torch.int64) for v in weights.values())
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    # resume on the GPU restores the scaler and continues
    again = finetune(tiny_config(fmnist, model={'img_size': 32}, data={'workers': 2, 'loader': loader},
                                 train={'epochs': 3, 'amp_dtype': amp_dtype, 'channels_last': True,
                                        'model_ema': True}),
                     tmp_path / 'run', device='cuda', progress=False, resume=True)
    assert again['epochs_completed'] == 3


def test_compile(tmp_path, fmnist):
    cfg = tiny_config(fmnist, model={'img_size': 32}, train={'epochs': 1, 'compile': True, 'amp_dtype': 'bfloat16'})
    m = finetune(cfg, tmp_path / 'run', device='cuda', progress=False)
    assert m['status'] == 'finished'
    # the exported keys are the plain model's (no _orig_mod. prefix from the compiled wrapper)
    assert not any(k.startswith('_orig_mod') for k in load_file(tmp_path / 'run' / 'model.safetensors'))
