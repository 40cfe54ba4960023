"""scripts/gpu_check.sh in its CPU mode (tiny sizes): every step runs, time-boxed, and writes its results;
a step that fails or cannot start makes the exit status 1 (the interpreter check: test_bad_inputs_tools.py)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from timm_asap_lab.data import DEFAULT_FASHION_MNIST_DIR, find_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
STEPS = ['gpu_tests', 'layers', 'models_resnet50', 'models_cifar', 'profile_cifar', 'study']


@pytest.mark.skipif(shutil.which('timeout') is None or shutil.which('bash') is None, reason='needs bash and timeout')
def test_gpu_check_cpu_mode(tmp_path):
    pytest.importorskip('art')
    if find_fashion_mnist(DEFAULT_FASHION_MNIST_DIR, 'test') is not None:
        data = DEFAULT_FASHION_MNIST_DIR
    else:
        from finetune_helpers import write_fake_fashion_mnist
        data = str(write_fake_fashion_mnist(tmp_path / 'fmnist', n_train=300, n_test=100))
    out = tmp_path / 'out'
    env = {**os.environ, 'PYTHON': sys.executable, 'TMPDIR': str(tmp_path)}
    # the CPU mode's own budget is 115 s; a larger one keeps the test meaningful on a busy shared machine
    proc = subprocess.run(['bash', str(ROOT / 'scripts' / 'gpu_check.sh'), '--cpu', '--data', data, '--out', str(out),
                           '--budget', '200'], capture_output=True, text=True, env=env, timeout=330)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ['layers.json', 'models.json', 'models.md', 'profile.json', 'profile.md', 'status.json',
                     'status.md', 'study.md']
    assert all((out / f).stat().st_size < 100_000 for f in files)
    status = json.loads((out / 'status.json').read_text())
    steps = {s['step']: s['status'] for s in status['steps']}
    assert list(steps) == STEPS
    assert steps['study'] == 'ok', (out / 'status.md').read_text()[-3000:]
    assert all(v.startswith(('ok', 'timed out')) for v in steps.values()), steps  # each step boxed, none broken
    assert status['study']['table'] and status['machine']['mode'] == 'cpu'
    assert '| model |' in (out / 'study.md').read_text()


@pytest.mark.skipif(shutil.which('timeout') is None or shutil.which('bash') is None, reason='needs bash and timeout')
def test_gpu_check_records_skipped_steps(tmp_path):
    from finetune_helpers import write_fake_fashion_mnist

    data = write_fake_fashion_mnist(tmp_path / 'fmnist', n_train=10, n_test=10)
    out = tmp_path / 'out'
    env = {**os.environ, 'PYTHON': sys.executable, 'TMPDIR': str(tmp_path)}
    proc = subprocess.run(['bash', str(ROOT / 'scripts' / 'gpu_check.sh'), '--cpu', '--data', str(data), '--out', str(out),
                           '--budget', '5'], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    status = json.loads((out / 'status.json').read_text())
    assert [(s['step'], s['status']) for s in status['steps']] == [(s, 'skipped: no time left') for s in STEPS]
    assert 'skipped: no time left' in (out / 'status.md').read_text()


def test_gpu_check_bad_arguments(tmp_path):
    proc = subprocess.run(['bash', str(ROOT / 'scripts' / 'gpu_check.sh'), '--frobnicate'], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "unknown argument '--frobnicate'" in proc.stderr
    proc = subprocess.run(['bash', str(ROOT / 'scripts' / 'gpu_check.sh'), '--data', str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and 'no Fashion-MNIST IDX files' in proc.stderr


@pytest.mark.skipif(shutil.which('timeout') is None or shutil.which('bash') is None, reason='needs bash and timeout')
def test_gpu_check_steps_that_cannot_start_make_it_fail(tmp_path):
    """An interpreter that imports what the check needs but whose step commands cannot start (exit 127, as a
    missing command gives): every step is recorded as such and the exit status is 1, naming them."""
    from finetune_helpers import write_fake_fashion_mnist

    data = write_fake_fashion_mnist(tmp_path / 'fmnist', n_train=10, n_test=10)
    wrapper = tmp_path / 'python'
    wrapper.write_text(f"""#!/bin/sh
case "$1" in
  -m) echo "$2: cannot start here" >&2; exit 127 ;;
esac
exec {sys.executable} "$@"
""")
    wrapper.chmod(0o755)
    out = tmp_path / 'out'
    env = {**os.environ, 'PYTHON': str(wrapper), 'TMPDIR': str(tmp_path)}
    proc = subprocess.run(['bash', str(ROOT / 'scripts' / 'gpu_check.sh'), '--cpu', '--data', str(data), '--out', str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"{len(STEPS)} step(s) failed or could not start" in proc.stderr
    status = json.loads((out / 'status.json').read_text())
    assert [s['step'] for s in status['steps']] == STEPS
    assert all(s['status'].startswith('could not start (exit 127') for s in status['steps']), status['steps']
