"""timm-asap-finetune: config file or shipped name, --set overrides, shortcuts, exit codes, resume."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from timm_asap_lab.cli.finetune import main
from timm_asap_lab.config import list_hub_configs, save_config

from finetune_helpers import tiny_config, write_fake_fashion_mnist


pytestmark = pytest.mark.usefixtures('one_thread')


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def cfg_file(tmp_path):
    data = write_fake_fashion_mnist(tmp_path / 'data', n_train=32, n_test=16)
    return save_config(tiny_config(data, train={'epochs': 2}), tmp_path / 'tiny.yaml')


def test_run_with_overrides_and_shortcuts(tmp_path, cfg_file):
    out = tmp_path / 'out'
    rc = main(['--config', str(cfg_file), '--set', 'train.lr=0.02', 'train.weight_decay=0.0',
               '--set', 'data.hflip=0', '--epochs', '1', '--batch-size', '4', '--output', str(out), '--no-progress',
               '--device', 'cpu'])
    assert rc == 0
    saved = yaml.safe_load((out / 'config.yaml').read_text())
    assert saved['train']['lr'] == 0.02 and saved['train']['weight_decay'] == 0.0
    assert saved['train']['epochs'] == 1 and saved['train']['batch_size'] == 4 and saved['data']['hflip'] == 0.0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['status'] == 'finished' and metrics['history'][0]['train_images'] == 32
    # the folder holds a run: starting again is refused, --resume continues (here: nothing left to do)
    assert main(['--config', str(cfg_file), '--epochs', '1', '--batch-size', '4', '--output', str(out),
                 '--no-progress']) == 2
    assert main(['--output', str(out), '--no-progress', '--resume']) == 0  # the run's own config.yaml
    # a longer schedule continues the run
    assert main(['--output', str(out), '--no-progress', '--resume', '--epochs', '2']) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert [row['epoch'] for row in metrics['history']] == [1, 2] and metrics['config']['train']['lr'] == 0.02


def test_config_errors_name_the_key(tmp_path, cfg_file, capsys):
    assert main(['--config', str(cfg_file), '--set', 'train.lrate=0.1']) == 2
    assert 'train.lrate: unknown key' in capsys.readouterr().err
    assert main(['--config', str(cfg_file), '--set', 'train.epochs=many']) == 2
    assert "train.epochs: expected int, got str 'many'" in capsys.readouterr().err
    assert main(['--config', str(tmp_path / 'nope.yaml')]) == 2
    assert 'no config file' in capsys.readouterr().err
    bad = tmp_path / 'bad.yaml'
    bad.write_text('model:\n  architecture: resnet18_cifar_asap\n  pool: blur\n')
    assert main(['--config', str(bad)]) == 2
    assert "model.pool: must be one of ['asap', 'flc', 'none'], got 'blur'" in capsys.readouterr().err


def test_print_config_and_shipped_names(capsys):
    shipped = list_hub_configs()
    assert 'resnet18_cifar_asap.fmnist' in shipped
    assert main(['--config', 'resnet18_cifar_asap.fmnist', '--set', 'train.epochs=1', '--print-config']) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed['model']['architecture'] == 'resnet18_cifar_asap' and printed['train']['epochs'] == 1


def test_data_error_exit_code(tmp_path, cfg_file):
    rc = main(['--config', str(cfg_file), '--data-dir', str(tmp_path / 'missing'), '--output', str(tmp_path / 'o'),
               '--no-progress'])
    assert rc == 1


def test_script_is_a_thin_wrapper():
    proc = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'finetune.py'), '--help'],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and '--resume' in proc.stdout and 'torchrun' in proc.stdout
