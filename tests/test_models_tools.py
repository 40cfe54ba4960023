"""Coverage report and model benchmark: library functions and CLIs on tiny settings (no timing asserts)."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from timm_asap_lab.cli import benchmark_models as bench_cli
from timm_asap_lab.cli import coverage as coverage_cli
from timm_asap_lab.tools import coverage as cov
from timm_asap_lab.tools.benchmark_models import benchmark_models, format_table, target_checks


pytestmark = pytest.mark.usefixtures('one_thread')


def test_coverage_rows_for_a_few_families():
    rows = cov.coverage_rows(['resnet', 'vision_transformer', 'inception_v3:inception_v3', 'levit'], progress=False)
    by = {r.family: r for r in rows}
    assert by['resnet'].status == 'ok' and by['resnet'].output and by['resnet'].features and by['resnet'].state_dict
    assert by['resnet'].converted == by['resnet'].strided > 0
    assert by['vision_transformer'].status == 'skipped' and 'not convolutional' in by['vision_transformer'].note
    # 'valid'-padded strided convs are converted with the base's output sizes; its F.max_pool2d calls are found
    incep = by['inception_v3']
    assert incep.status == 'partial' and incep.output and incep.converted == incep.strided
    assert any(entry.startswith('Mixed_6a (max_pool2d)') for entry in incep.left)
    levit = by['levit']  # attention query subsampling is a strided layer asapify does not know
    assert levit.status == 'partial' and levit.converted < levit.strided and levit.left
    table = cov.rows_to_markdown(rows)
    assert '| resnet | resnet18 | ok |' in table and 'Totals:' in table


def test_coverage_finds_functional_downsampling():
    class Functional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, 2, 1)

        def forward(self, x):
            return torch.nn.functional.avg_pool2d(self.conv(x), 2)

    model = torch.nn.Sequential(Functional())
    from timm_asap.models import asapify
    asapify(model)
    assert cov._functional_downsampling(model, torch.randn(1, 3, 32, 32), 'NCHW') == ['0 (avg_pool2d)']
    assert cov._functional_downsampling(model, torch.empty(1, 3, 32, 32, device='meta'), 'NCHW') == ['0 (avg_pool2d)']


def test_coverage_cli(tmp_path):
    config = tmp_path / 'c.yaml'
    config.write_text(yaml.safe_dump(dict(families=['resnet'], pool='flc')))
    out = tmp_path / 'out'
    assert coverage_cli.main(['--config', str(config), '--output-dir', str(out), '--no-progress']) == 0
    data = json.loads((out / 'coverage.json').read_text())
    assert data['pool'] == 'flc' and data['rows'][0]['status'] == 'ok'
    assert yaml.safe_load((out / 'config.yaml').read_text())['families'] == ['resnet']
    with pytest.raises(SystemExit):
        config.write_text(yaml.safe_dump(dict(familys=['resnet'])))
        coverage_cli.main(['--config', str(config)])


def test_benchmark_models_rows_and_ratios():
    rows = benchmark_models('cpu', batch_size=2, img_size=64, models=['resnet50_asap', 'resnet50_asap_fft'],
                            rounds=1, warmup=0, progress=False)
    assert {r['model'] for r in rows} == {'resnet50', 'resnet50_asap', 'resnet50_asap_fft'}
    assert {r['pass'] for r in rows} == {'infer', 'train'}
    base = [r for r in rows if r['model'] == 'resnet50']
    assert all(r['ratio_vs_resnet50'] == 1.0 and r['img_per_s'] > 0 for r in base)
    assert 'resnet50_asap_fft' in format_table(rows)
    checks = target_checks(rows)
    assert any('FFT formulation' in c for c in checks) and any('>= 0.9x' in c for c in checks)
    # one round supports no verdict; each ratio carries its spread over the rounds
    assert all(c.endswith('unreliable: 1 round, at least 5 are needed for a verdict') for c in checks)
    assert all(r['ratio_spread']['rounds'] == 1 and r['ratio_spread']['interval'] is None for r in rows)
    assert all(r['ratio_spread']['min'] == r['ratio_spread']['median'] == r['ratio_spread']['max']
               and abs(r['ratio_spread']['median'] - r['ratio_vs_baseline']) < 1e-3 for r in rows)


def test_paired_ratio_interval_and_rule():
    from timm_asap_lab.tools.timing import MIN_ROUNDS, median_interval, paired_ratio
    assert MIN_ROUNDS == 5
    # the order-statistic interval of the median: [min, max] for 5 to 7 values, then it moves inwards
    assert median_interval([3, 1, 2, 5, 4]) == (1, 5) and median_interval([1, 2, 3, 4]) is None
    assert median_interval(list(range(1, 10))) == (2, 8) and median_interval(list(range(1, 16))) == (4, 12)
    r = paired_ratio([2, 4, 6], [1, 2, 2])
    assert r.ratios == (2.0, 2.0, 3.0) and (r.low, r.median, r.high) == (2.0, 2.0, 3.0)
    assert r.as_dict() == {'median': 2.0, 'min': 2.0, 'max': 3.0, 'rounds': 3, 'interval': None}
    assert r.short() == '2.00x (2.00-3.00)'
    # an outlier round outside the interval of nine does not stop a verdict
    nine = paired_ratio([100] * 9, [100, 101, 99, 100, 102, 98, 100, 40, 100])
    assert nine.verdict(0.9) == 'met' and nine.high == 2.5
    assert nine.verdict(1.2, at_least=False) == 'met' and nine.verdict(1.0, at_least=False).startswith('unreliable')
    with pytest.raises(ValueError, match='same rounds on both sides, got 2 and 1 rounds'):
        paired_ratio([1, 2], [1])
    with pytest.raises(ValueError, match='must be positive'):
        paired_ratio([1, 0], [1, 1])


def test_benchmark_models_times_both_placements_in_one_run():
    rows = benchmark_models('cpu', batch_size=1, img_size=32, family='resnet18', models=['resnet18_asap'], rounds=1,
                            warmup=0, progress=False, passes=('infer',), pool_positions=('before', 'after'))
    assert [r['model'] for r in rows] == ['resnet18', 'resnet18_asap', 'resnet18_asap (pool after)']
    assert all(r['baseline'] == 'resnet18' and r['ratio_vs_baseline'] > 0 for r in rows)
    assert 'resnet18_asap (pool after)' in format_table(rows)
    only_after = benchmark_models('cpu', batch_size=1, img_size=32, family='resnet18', rounds=1, warmup=0,
                                  progress=False, passes=('infer',), pool_positions=('after',))
    assert [r['model'] for r in only_after] == ['resnet18', 'resnet18_asap (pool after)', 'resnet18_flc (pool after)']
    with pytest.raises(ValueError, match=r"pool_positions must be a non-empty selection of \['before', 'after'\]"):
        benchmark_models('cpu', family='resnet18', pool_positions=('sideways',), progress=False)


def test_placed_labels_and_families():
    from timm_asap_lab.tools.benchmark_models import MODELS, build_model, family_of, placed_labels
    from timm_asap.models import pool_position_of
    labels = placed_labels(['resnet50', 'resnet50_asap', 'resnetaa50 (BlurPool)'], ('before', 'after'))
    assert labels == ['resnet50', 'resnet50_asap', 'resnet50_asap (pool after)', 'resnetaa50 (BlurPool)']
    assert all(label in MODELS for label in labels)
    assert family_of('resnet18_cifar_flc (pool after)') == 'resnet18_cifar' and family_of('vit') is None
    assert pool_position_of(build_model('resnet18_cifar_asap (pool after)')) == 'after'
    assert pool_position_of(build_model('resnet18_cifar_asap')) == 'before'


def test_benchmark_cli_pool_position(tmp_path, capsys):
    out = tmp_path / 'b'
    rc = bench_cli.main(['--device', 'cpu', '--family', 'resnet18_cifar', '--models', 'resnet18_cifar_flc',
                         '--pool-position', 'both', '--batch-size', '1', '--rounds', '1', '--warmup', '0',
                         '--compile', 'off', '--no-cpu-memory', '--output-dir', str(out), '--no-progress'])
    assert rc == 0
    data = json.loads((out / 'benchmark_models.json').read_text())
    assert {r['model'] for r in data['rows']} == {'resnet18_cifar', 'resnet18_cifar_flc',
                                                  'resnet18_cifar_flc (pool after)'}
    assert yaml.safe_load((out / 'config.yaml').read_text())['pool_position'] == 'both'
    with pytest.raises(SystemExit):
        bench_cli.main(['--pool-position', 'middle'])


def test_benchmark_cli_skips_cuda_cleanly(tmp_path, capsys):
    out = tmp_path / 'b'
    rc = bench_cli.main(['--batch-size', '2', '--img-size', '64', '--rounds', '1', '--warmup', '0', '--compile', 'off',
                         '--models', 'resnet50_flc', '--no-cpu-memory', '--output-dir', str(out), '--no-progress'])
    assert rc == 0
    data = json.loads((out / 'benchmark_models.json').read_text())
    assert {r['device'] for r in data['rows']} == ({'cpu', 'cuda'} if torch.cuda.is_available() else {'cpu'})
    if not torch.cuda.is_available():
        assert 'no CUDA device' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench_cli.main(['--rounds', '0'])
