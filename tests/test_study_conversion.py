"""The study's conversion arm: arms and their names, configs, the converted and repaired models, the cost and goal
lines, and the whole arm at its smallest inside a study run."""
from __future__ import annotations

import json

import pytest
import torch

from timm_asap_lab.study import FAMILIES, StudyOptions, default_options, preset_options, run_study, study_config
from timm_asap_lab.study_conversion import (
    Arm, arm_config, conversion_arms, converted_model, cost_rows, goal_check, repaired_model)

from finetune_helpers import write_fake_fashion_mnist

SMALL = FAMILIES['preactresnet18_w8']


def _base_cfg(**opts):
    return study_config(SMALL.name, SMALL.architecture, SMALL, 0, default_options(**opts), '/data')


def test_arms_and_their_names():
    arms = conversion_arms(['asap'], ['before', 'after'], [1, 2], [False, True])
    names = [a.name for a in arms]
    assert names == ['zeroshot', 'repaired', 'ft1', 'ft1_kd', 'ft2', 'ft2_kd',
                     'zeroshot_after', 'repaired_after', 'ft1_after', 'ft1_kd_after', 'ft2_after', 'ft2_kd_after']
    assert arms[3].label('preactresnet18_w8') == 'preactresnet18_w8_asap.conv_ft1_kd'
    assert arms[3].describe() == 'ASAP converted (pool before), 1 epoch fine-tuned with distillation'
    assert conversion_arms([], ['before'], [1], [False]) == []


def test_options_of_the_arm_are_checked():
    assert default_options().convert_pools == ['asap']
    with pytest.raises(ValueError, match=r"convert_pools must be distinct values of \['asap', 'flc'\], got \['blur'\]"):
        default_options(convert_pools=['blur'])
    with pytest.raises(ValueError, match='convert_positions must be distinct values'):
        default_options(convert_positions=['middle'])
    with pytest.raises(ValueError, match='convert_epochs must be distinct integers >= 1'):
        default_options(convert_epochs=[0])
    with pytest.raises(ValueError, match='convert_lr must be > 0'):
        default_options(convert_lr=0)
    with pytest.raises(ValueError, match='repair_images must be >= 1'):
        default_options(repair_images=0)
    assert preset_options('default', convert_pools=[]).convert_pools == []


def test_arm_config_starts_from_the_baseline_weights():
    base = _base_cfg()
    cfg = arm_config(Arm('asap', 'after', 2, distill=True), base, '/runs/base', 0.01, 'org/x')
    assert cfg.model.architecture == 'preactresnet18_asap' and cfg.model.pool == 'asap'
    assert cfg.model.pool_position == 'after' and cfg.model.base == '/runs/base' and not cfg.model.base_file
    assert cfg.model.model_args == base.model.model_args
    assert cfg.train.epochs == 2 and cfg.train.warmup_epochs == 0 and cfg.train.lr == 0.01
    assert cfg.train.distill.enabled and cfg.train.seed == base.train.seed and cfg.hub.repo_id == 'org/x'
    with pytest.raises(ValueError, match="arm 'zeroshot' has no fine-tuning"):
        arm_config(Arm('asap'), base, 'x', 0.01, 'org/x')


@pytest.mark.parametrize('position', ['before', 'after'])
def test_converted_and_repaired_models(position):
    from timm_asap_lab.config_model import create_model_from_config

    torch.manual_seed(0)
    base_cfg = _base_cfg()
    base = create_model_from_config(base_cfg).eval()
    arm = Arm('asap', position)
    net = converted_model(arm, base_cfg, base)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), base.state_dict().values()))
    x = torch.rand(4, 1, 32, 32)
    assert not torch.allclose(net(x), base(x))  # same weights, another function
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = torch.randint(0, 256, (16, 1, 32, 32), dtype=torch.uint8)
    repaired = repaired_model(net, images, base_cfg.data.mean, base_cfg.data.std)
    changed = {k for k, v in repaired.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith(('running_mean', 'running_var', 'num_batches_tracked')) for k in changed)
    assert not repaired.training


def test_cost_and_goal_lines():
    arms = {'b_asap.conv_ft1': Arm('asap', epochs=1), 'b_asap.conv_zeroshot': Arm('asap')}
    costs = cost_rows(arms, scratch_images=180000, repair_images=2000, n_train=60000,
                      seconds={'b_asap.conv_ft1': [60.0, 66.0]})
    assert [round(r['relative_cost'], 3) for r in costs] == [0.333, 0.0] and costs[0]['seconds'] == 63.0
    rows = [{'model': 'b', 'clean top-1': 90.0, 'clean top-1 se': 0.3, 'corruption mCA': 68.0},
            {'model': 'b_asap', 'clean top-1': 90.4, 'corruption mCA': 72.0},
            {'model': 'b_asap.conv_ft1', 'clean top-1': 89.8, 'clean top-1 se': 0.3, 'corruption mCA': 73.0}]
    lines = goal_check(rows, 'b', {'asap': 'b_asap'}, arms, {r['model']: r['relative_cost'] for r in costs})
    assert lines == ["b_asap.conv_ft1: reaches the goal (clean -0.2 pp vs the base, SE 0.4; corruption mCA gain "
                     "+5.0 pp vs from-scratch ASAP's +4.0 pp; cost 0.33 of from-scratch, bound 0.33)"]
    rows[2]['corruption mCA'] = 70.0
    assert 'does not reach' in goal_check(rows, 'b', {'asap': 'b_asap'}, arms, {'b_asap.conv_ft1': 0.34})[0]


def test_study_with_the_conversion_arm_at_its_smallest(tmp_path):
    data = write_fake_fashion_mnist(tmp_path / 'fmnist', n_train=64, n_test=32)
    out = tmp_path / 'study'
    opts = StudyOptions(output_dir=str(out), data_dir=str(data), device='cpu', train_subset=64, val_subset=16,
                        epochs=2, batch_size=32, eval_count=32, corruption_count=8, attack_count=8, shift_count=8,
                        severities=[1], eps=[2 / 255], pgd_steps=2, shift_trials=1, workers=0, eval_batch_size=32,
                        progress=False, convert_positions=['before', 'after'], convert_distill=[False, True],
                        repair_images=32)
    lines = []
    result = run_study(opts, log=lines.append)
    labels = [f'preactresnet18_w8_asap.conv_{n}' for n in
              ('zeroshot', 'repaired', 'ft1', 'ft1_kd', 'zeroshot_after', 'repaired_after', 'ft1_after', 'ft1_kd_after')]
    part = result['conversion']['preactresnet18_w8']
    assert [r['model'] for r in part['table']] == ['preactresnet18_w8', 'preactresnet18_w8_flc', 'preactresnet18_w8_asap',
                                                   *labels]
    assert [r['model'] for r in part['costs']] == labels
    assert [round(r['relative_cost'], 2) for r in part['costs']] == [0, 0, 0.5, 0.5] * 2
    assert len(part['goal']) == 4 and all('the goal' in g for g in part['goal'])
    # the fine-tuned arms started from the baseline's weights and are published and reloaded like the others
    for label in (lab for lab in labels if '_ft' in lab.replace('.conv_ft', '_ft')):
        cfg = json.loads((out / 'hub' / label / 'config.json').read_text())
        assert cfg['architecture'] == 'preactresnet18_asap'
        assert cfg['model_args'].get('pool_position', 'before') == ('after' if label.endswith('_after') else 'before')
        run_cfg = (out / 'runs' / label / 'seed0' / 'config.yaml').read_text()
        assert f"base: {out / 'runs' / 'preactresnet18_w8' / 'seed0'}" in run_cfg
    assert {c['model'] for c in result['reload']} >= {lab for lab in labels if '.conv_ft' in lab}
    assert all(c['identical'] for c in result['reload'])
    summary = (out / 'summary.md').read_text()
    assert '### Conversion arm: preactresnet18_w8' in summary and 'relative to from-scratch' in summary
    assert (out / 'conversion_preactresnet18_w8.png').is_file()
    assert (out / 'eval' / 'preactresnet18_w8' / 'seed0' / 'conversion' / 'results.json').is_file()
    # a re-run reuses every run and evaluation
    lines.clear()
    again = run_study(opts, log=lines.append)
    assert again['conversion']['preactresnet18_w8']['table'] == part['table']
    assert sum('not evaluating again' in line for line in lines) == 2
