"""The CLI error funnel: expected failures become one line and a documented exit status."""
import signal

import pytest

from timm_asap_lab.cli._errors import STATUS_BAD_INPUT, STATUS_FAILED, run_cli


class _Stopped(RuntimeError):
    signum = signal.SIGTERM


@pytest.mark.parametrize('exc, status, text', [
    (ValueError('bad --eps 2'), STATUS_BAD_INPUT, 'prog: error: bad --eps 2'),
    (FileNotFoundError(2, 'No such file or directory', 'ckpt.safetensors'), STATUS_BAD_INPUT,
     'prog: error: ckpt.safetensors: No such file or directory'),
    (FileNotFoundError('ckpt.safetensors'), STATUS_BAD_INPUT, 'prog: error: ckpt.safetensors'),
    (_Stopped('stopped by SIGTERM'), 128 + signal.SIGTERM, 'prog: error: stopped by SIGTERM'),
    (RuntimeError('upload refused'), STATUS_FAILED, 'prog: error: upload refused'),
])
def test_expected_failures_are_one_line(capsys, exc, status, text):
    def body():
        raise exc
    assert run_cli('prog', body, [(RuntimeError, STATUS_FAILED)]) == status
    err = capsys.readouterr().err
    assert err.strip() == text
    assert 'Traceback' not in err


def test_an_error_without_a_message_names_its_type(capsys):
    def body():
        raise ValueError()
    assert run_cli('prog', body) == STATUS_BAD_INPUT
    assert capsys.readouterr().err.strip() == 'prog: error: ValueError'


def test_unexpected_errors_propagate():
    def body():
        raise RuntimeError('a bug')
    with pytest.raises(RuntimeError, match='a bug'):
        run_cli('prog', body)


def test_the_body_status_is_returned():
    assert run_cli('prog', lambda: None) == 0
    assert run_cli('prog', lambda: 4) == 4


@pytest.mark.parametrize('command', [['timm_asap_lab.cli.main', 'study'], ['timm_asap_lab.cli.finetune', '--help'],
                                     ['timm_asap_lab.cli.publish', '--help']])
def test_a_command_without_the_lab_dependencies_names_the_extra(command):
    """Without the [lab] extra's packages (here matplotlib and tqdm hidden from the import system) a
    command stops with one line naming what is missing and the extra to install, exit status 2."""
    import subprocess
    import sys
    module, *args = command
    code = ("import sys; sys.modules['matplotlib'] = None; sys.modules['tqdm'] = None; "
            f"sys.argv = ['timm-asap', *{args!r}]; import runpy; runpy.run_module({module!r}, run_name='__main__')")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert 'missing: tqdm, matplotlib' in r.stderr and "pip install -e '.[lab]'" in r.stderr
    assert 'Traceback' not in r.stderr


def test_the_plugin_installs_only_its_four_libraries():
    import configparser
    from pathlib import Path
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / 'setup.cfg')
    requires = [r.split('>')[0].split('<')[0].split('=')[0].strip()
                for r in cfg['options']['install_requires'].split('\n') if r.strip()]
    assert sorted(requires) == ['huggingface-hub', 'safetensors', 'timm', 'torch']
    lab = {r.split('>')[0].strip() for r in cfg['options.extras_require']['lab'].split('\n') if r.strip()}
    for extra in ('eval', 'dev'):  # the extras of the README's two commands include the lab's
        assert lab <= {r.split('>')[0].strip() for r in cfg['options.extras_require'][extra].split('\n') if r.strip()}
