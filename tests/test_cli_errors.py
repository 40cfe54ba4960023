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
