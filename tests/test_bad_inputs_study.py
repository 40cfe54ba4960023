"""Bad inputs and stale results of the study and of a diverging fine-tune: each case gets one clear line and its
documented exit status before any long work, or the correct result (never old numbers under new options).

The study runs at its smallest (1 epoch on 64 synthetic Fashion-MNIST images, a few test images, one eps, PGD-2);
one finished study is made once per module and copied into each test that re-runs it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from timm_asap_lab.cli.finetune import main as finetune_main
from timm_asap_lab.cli.study import main as study_main
from timm_asap_lab.config import save_config
from timm_asap_lab.evaluation import read_results
from timm_asap_lab.study import StudyOptions, _plot_summary, run_study, study_table
from timm_asap_lab.train import NonFiniteLossError, finetune

from finetune_helpers import tiny_config, write_fake_fashion_mnist

# the first run's options; the CLI cases repeat the ones the CLI has flags for
TRAIN = dict(train_subset=64, val_subset=16, epochs=1, batch_size=32)
EVAL = dict(eval_count=64, corruption_count=8, attack_count=8, shift_count=8, severities=[1])
FIXED = dict(eps=[2 / 255], pgd_steps=2, shift_trials=1, workers=0, eval_batch_size=64, progress=False,
             convert_pools=[])  # the conversion arm has tests of its own (test_study_conversion.py)


def _cli_args(data: Path, out: Path, **changes) -> list[str]:
    values = {**TRAIN, **EVAL, **changes}
    args = ['--data-dir', str(data), '--output', str(out), '--device', 'cpu', '--workers', '0', '--no-progress',
            '--no-conversion']
    for key, value in values.items():
        flag = '--' + key.replace('_', '-')
        args += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return args


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob('*') if p.is_file()}


@pytest.fixture(scope='module')
def finished_study(tmp_path_factory):
    """(data folder, output folder) of one finished tiny study (seed 0, eval_count 64, severity 1)."""
    root = tmp_path_factory.mktemp('study')
    data = write_fake_fashion_mnist(root / 'fmnist', n_train=64, n_test=64)
    out = root / 'O'
    run_study(StudyOptions(output_dir=str(out), data_dir=str(data), device='cpu', **TRAIN, **EVAL, **FIXED),
              log=lambda line: None)
    return data, out


@pytest.fixture
def study_copy(finished_study, tmp_path):
    data, out = finished_study
    copy = tmp_path / 'O'
    shutil.copytree(out, copy)
    return data, copy


def _no_training(monkeypatch):
    """Fail the test instead of training (the cases below must stop before any training starts)."""
    import timm_asap_lab.train
    import timm_asap_lab.train.trainer

    def refuse(*args, **kwargs):
        pytest.fail('a training run was started')
    monkeypatch.setattr(timm_asap_lab.train, 'ensure_finetuned', refuse)
    monkeypatch.setattr(timm_asap_lab.train.trainer, 'finetune', refuse)


# --- 2: a re-run with other evaluation options evaluates again and says what ran -------------------------------

def test_rerun_with_other_eval_options_is_evaluated_again_and_the_summary_states_what_ran(study_copy):
    data, out = study_copy
    results = out / 'eval' / 'preactresnet18_w8' / 'seed0' / 'results.json'
    lines = []
    result = run_study(StudyOptions(output_dir=str(out), data_dir=str(data), device='cpu', **TRAIN,
                                    **{**EVAL, 'eval_count': 32, 'severities': [3]}, **FIXED), log=lines.append)
    assert any(f"{results} was made with other settings (options.count: 64 there vs 32 now, options.severities: [1] "
               f"there vs [3] now" in line and 'evaluating the preactresnet18_w8 family seed 0 again' in line
               for line in lines), lines
    rows, config = read_results(results)
    assert config['options']['count'] == 32 and config['options']['severities'] == [3] and config['count'] == 32
    assert {r['count'] for r in rows if r.get('task') == 'clean'} == {32}
    assert {r['severity'] for r in rows if r.get('task') == 'corruption'} == {3}
    assert [r['clean top-1 n'] for r in result['table']] == [32, 32, 32]
    summary = (out / 'summary.md').read_text()
    assert 'clean on 32 test images, 15 corruptions x 1 severity (3) on 8' in summary and 'clean top-1: 32' in summary
    saved = json.loads((out / 'study.json').read_text())
    assert 'clean on 32 test images' in saved['size'] and 'seeds [0]' in saved['size']
    assert saved['evaluations']['preactresnet18_w8/seed0']['options']['severities'] == [3]
    # the same options again: the stored results are used as they are
    lines.clear()
    again = run_study(StudyOptions(output_dir=str(out), data_dir=str(data), device='cpu', **TRAIN,
                                   **{**EVAL, 'eval_count': 32, 'severities': [3]}, **FIXED), log=lines.append)
    assert any('made with these settings and weights; not evaluating again' in line for line in lines), lines
    assert again['table'] == result['table']


# --- 8: a re-run with other training options: one line, nothing written ------------------------------------------

def test_rerun_with_other_training_options_ends_in_one_line_and_writes_nothing(study_copy, capsys, monkeypatch):
    data, out = study_copy
    before = _tree(out)
    _no_training(monkeypatch)
    assert study_main(_cli_args(data, out, epochs=2, eval_count=32)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'Traceback' not in err[0], err
    run = out / 'runs' / 'preactresnet18_w8' / 'seed0'
    assert err[0] == (f"timm-asap study: error: {run} holds a finished run of another configuration (there vs now: "
                      f"train.epochs: 1 vs 2, train.warmup_epochs: 0 vs 1); use another output folder or remove {run}")
    assert _tree(out) == before  # options.json included


def test_rerun_onto_an_unfinished_run_of_other_training_options_is_refused(study_copy, capsys, monkeypatch):
    data, out = study_copy
    run = out / 'runs' / 'preactresnet18_w8' / 'seed0'
    (run / 'metrics.json').unlink()  # as a run stopped mid-way leaves it: last.pth and config.yaml
    before = _tree(out)
    _no_training(monkeypatch)
    assert study_main(_cli_args(data, out, train_subset=32)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"timm-asap study: error: {run} holds an unfinished run of another "
                                               f"configuration (there vs now: data.train_subset: 64 vs 32)"), err
    assert _tree(out) == before


# --- 8: options checked before any training ----------------------------------------------------------------------

def test_output_naming_a_regular_file_is_one_line_before_anything_runs(tmp_path, capsys, monkeypatch):
    data = write_fake_fashion_mnist(tmp_path / 'fmnist', n_train=16, n_test=16)
    target = tmp_path / 'notes.txt'
    target.write_text('mine\n')
    _no_training(monkeypatch)
    assert study_main(_cli_args(data, target)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"timm-asap study: error: output folder {target} is a file, not a folder; name a folder (it is "
                   f"created when missing)"]
    assert target.read_text() == 'mine\n'
    assert study_main(_cli_args(data, target / 'sub')) == 2
    assert f"cannot be created: {target} is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize('flags,expected', [
    (['--severities', '7'], "severity must be an integer in 1..5, got 7"),
    (['--severities', '0', '2'], "severity must be an integer in 1..5, got 0"),
    (['--families', 'resnet50'], "families must be a non-empty subset of"),
    (['--shift-count', '0'], "shift_count must be >= 1, got 0"),
])
def test_study_options_are_checked_before_any_training(tmp_path, capsys, monkeypatch, flags, expected):
    data = write_fake_fashion_mnist(tmp_path / 'fmnist', n_train=16, n_test=16)
    out = tmp_path / 'O'
    _no_training(monkeypatch)
    assert study_main(_cli_args(data, out) + flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('timm-asap study: error: ') and expected in err[0], err
    assert not out.exists()


# --- 8: a diverging fine-tune names only files that exist, and its hint works ------------------------------------

def test_diverging_finetune_without_a_checkpoint_says_so_and_starting_again_works(tmp_path, capsys):
    data = write_fake_fashion_mnist(tmp_path / 'fmnist', n_train=48, n_test=16)
    config = save_config(tiny_config(data, train={'epochs': 1}), tmp_path / 'run.yaml')
    out = tmp_path / 'run'
    common = ['--config', str(config), '--output', str(out), '--device', 'cpu', '--no-progress']
    assert finetune_main(common + ['--lr', '1e9']) == 1
    err = capsys.readouterr().err  # the CLI prints its one error line
    assert 'the training loss became NaN/Inf in epoch 1' in err and 'no epoch finished, so there is none to resume' in err
    assert 'last.pth' not in err and not (out / 'last.pth').exists()
    assert 'Start again with a lower train.lr (e.g. --lr 1e+08, a tenth of 1e+09; the same --output starts afresh)' in err
    assert finetune_main(common + ['--lr', '0.05']) == 0  # the same --output, a lower lr: starts afresh
    assert json.loads((out / 'metrics.json').read_text())['status'] == 'finished'


def test_diverging_finetune_after_an_epoch_names_its_checkpoint_and_resuming_it_works(tmp_path):
    data = write_fake_fashion_mnist(tmp_path / 'fmnist', n_train=48, n_test=16)
    out = tmp_path / 'run'

    def poison(state):  # the weights blow up in the second epoch
        if state.epoch == 1 and state.batches_done == 2:
            with torch.no_grad():
                for p in state.model.parameters():
                    p.fill_(float('inf'))

    with pytest.raises(NonFiniteLossError) as caught:
        finetune(tiny_config(data, train={'epochs': 2}), out, device='cpu', progress=False, callbacks=[poison])
    message = str(caught.value)
    assert f"the last good one is {out / 'last.pth'} (epoch 1)" in message and (out / 'last.pth').is_file()
    hint = f"timm-asap finetune --output {out} --resume --lr 0.005"
    assert hint in message
    assert finetune_main(hint.split()[2:] + ['--device', 'cpu', '--no-progress']) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['status'] == 'finished' and metrics['epochs_completed'] == 2


# --- 12: the summary plot's bars are the spread over seeds or, with one seed, the sampling error ------------------

def _bars(monkeypatch, per_seed):
    import matplotlib.axes
    drawn, titles = [], []
    bar, set_title = matplotlib.axes.Axes.bar, matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, 'bar', lambda self, *a, **k: drawn.append(k['yerr']) or bar(self, *a, **k))
    monkeypatch.setattr(matplotlib.axes.Axes, 'set_title',
                        lambda self, text, *a, **k: titles.append(text) or set_title(self, text, *a, **k))
    _, rows = study_table(per_seed)
    return rows, drawn, titles


def test_summary_plot_with_one_seed_draws_the_sampling_error_and_says_so(tmp_path, monkeypatch):
    per_seed = {0: [{'task': 'clean', 'model': 'a', 'top1': 90.0, 'count': 100},
                    {'task': 'shift', 'model': 'a', 'consistency': 50.0, 'count': 400}]}
    rows, drawn, titles = _bars(monkeypatch, per_seed)
    _plot_summary(rows, tmp_path / 'summary.png')
    assert drawn == [[pytest.approx(3.0), pytest.approx(2.5)]]  # sqrt(p (1 - p) / n) in %
    assert 'bars: ± binomial standard error of the test-image sample (seed 0 only' in ' '.join(titles[0].split())
    assert (tmp_path / 'summary.png').stat().st_size > 0


def test_summary_plot_with_several_seeds_draws_their_spread_and_says_so(tmp_path, monkeypatch):
    per_seed = {s: [{'task': 'clean', 'model': 'a', 'top1': 90.0 + 2 * s, 'count': 100}] for s in (0, 1)}
    rows, drawn, titles = _bars(monkeypatch, per_seed)
    _plot_summary(rows, tmp_path / 'summary.png')
    assert drawn == [[pytest.approx(2 ** 0.5)]]
    assert 'bars: ± standard deviation over the 2 seeds [0, 1]' in ' '.join(titles[0].split())
