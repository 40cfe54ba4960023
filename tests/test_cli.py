"""The timm-asap command dispatcher and list-models."""
import pytest

from timm_asap_lab.cli.main import COMMANDS, main as dispatch


def test_list_models_command(capsys):
    from timm_asap_lab.cli.list_models import main, model_rows
    rows = {r['architecture']: r for r in model_rows('resnet18_cifar')}
    assert set(rows) == {'resnet18_cifar', 'resnet18_cifar_asap', 'resnet18_cifar_flc'}
    assert [rows[n]['pool'] for n in sorted(rows)] == ['none', 'asap', 'flc']
    assert rows['resnet18_cifar_asap']['unpublished'] == ['fmnist'] and rows['resnet18_cifar_asap']['tags'] == []
    assert rows['resnet18_cifar']['unpublished'] == ['fmnist']
    assert 'resnet50' not in {r['architecture'] for r in model_rows('resnet50')}  # timm's own bases are not listed
    assert main(['resnet50']) == 0
    out = capsys.readouterr().out
    assert 'resnet50_asap' in out and 'tv_in1k_base' in out and 'not published yet: ft_in1k' in out
    with pytest.raises(SystemExit, match='no registered ASAP/FLC architecture or CIFAR-size baseline matches'):
        main(['nosuchnet'])
    # no pattern: every architecture, the baselines whose names have no underscore included
    assert main([]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert {'preactresnet18', 'preactresnet18_asap', 'resnet50_flc', 'wide_resnet28_10'} <= listed
    assert {r['architecture']: r['pool'] for r in model_rows('preact*')} == {
        'preactresnet18': 'none', 'preactresnet18_asap': 'asap', 'preactresnet18_flc': 'flc'}


def test_dispatcher(capsys):
    assert dispatch([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert dispatch(['no-such-command']) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        dispatch(['benchmark-layers', '--help'])
    assert exc.value.code == 0


@pytest.mark.parametrize('command', list(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        dispatch([command, '--help'])
    assert exc.value.code == 0
    assert 'usage:' in capsys.readouterr().out


def test_benchmark_models_short_names(tmp_path):
    from timm_asap_lab.cli.benchmark_models import parse_args
    assert parse_args(['--models', 'resnetaa50', 'resnet50_asap']).models == ['resnetaa50 (BlurPool)', 'resnet50_asap']
    config = tmp_path / 'bench.yaml'
    config.write_text('models: [resnetaa50]\n')
    assert parse_args(['--config', str(config)]).models == ['resnetaa50 (BlurPool)']
    config.write_text('models: resnetaa50\n')  # one model as a plain string
    assert parse_args(['--config', str(config)]).models == ['resnetaa50 (BlurPool)']
    config.write_text('models: [resnet51]\n')
    with pytest.raises(SystemExit, match=r"unknown model 'resnet51'; allowed: resnet50, .*resnetaa50"):
        parse_args(['--config', str(config)])


def test_benchmark_models_unknown_name_lists_short_names(capsys):
    from timm_asap_lab.cli.benchmark_models import parse_args
    with pytest.raises(SystemExit):
        parse_args(['--models', 'resnet51'])
    err = capsys.readouterr().err
    assert "unknown model 'resnet51'; allowed: resnet50, resnet50_asap, resnet50_flc, resnetaa50," in err
    assert '(BlurPool)' not in err
