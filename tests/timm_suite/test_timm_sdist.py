"""Fetching timm's sdist: a download or archive failure is an error that says what failed and how to fix it."""
import tarfile

import pytest
from timm_sdist import CACHE_ENV, SdistFetchError, cache_dir, plugin_model_names, timm_tests_dir


def test_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert cache_dir() == tmp_path / 'xdg' / 'timm-asap' / 'timm-sdist'


def test_unreadable_archive_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    (tmp_path / 'timm-9.9.9.tar.gz').write_bytes(b'not a tar file')
    expected = r"(?s)timm-9\.9\.9\.tar\.gz cannot be read as timm 9\.9\.9's sdist.*delete it"
    with pytest.raises(SdistFetchError, match=expected):
        timm_tests_dir('9.9.9')


def test_archive_without_tests_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    (tmp_path / 'other.txt').write_text('x')
    with tarfile.open(tmp_path / 'timm-9.9.9.tar.gz', 'w:gz') as tar:
        tar.add(tmp_path / 'other.txt', arcname='timm-9.9.9/README.md')
    with pytest.raises(SdistFetchError, match=r'timm-9\.9\.9/tests/test_models\.py'):
        timm_tests_dir('9.9.9')
    assert not (tmp_path / 'timm-9.9.9' / 'tests' / 'test_models.py').exists()


def test_download_failure_is_an_error(tmp_path, monkeypatch):
    """A version that is not on the index (or no network at all): pip fails, the error names the offline fix."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setenv('PIP_RETRIES', '0')
    monkeypatch.setenv('PIP_TIMEOUT', '5')
    with pytest.raises(SdistFetchError, match=r'timm==0\.0\.0\.dev0.*put timm-0\.0\.0\.dev0\.tar\.gz into'):
        timm_tests_dir('0.0.0.dev0')
    assert [p.name for p in tmp_path.iterdir()] == []  # no partial download left behind


def test_extracted_once_then_cached(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    with tarfile.open(tmp_path / 'timm-9.9.9.tar.gz', 'w:gz') as tar:
        src = tmp_path / 'test_models.py'
        src.write_text('VALUE = 1\n')
        tar.add(src, arcname='timm-9.9.9/tests/test_models.py')
    tests = timm_tests_dir('9.9.9')
    assert (tests / 'test_models.py').read_text() == 'VALUE = 1\n'
    (tmp_path / 'timm-9.9.9.tar.gz').unlink()  # the extracted file is used from now on
    assert timm_tests_dir('9.9.9') == tests


def test_plugin_names_come_from_the_registry():
    names = plugin_model_names()
    for expected in ('resnet18_asap', 'resnet18_flc', 'resnet18_cifar', 'preactresnet18', 'wide_resnet28_10_flc'):
        assert expected in names
    assert 'resnet18' not in names
    tagged = plugin_model_names(include_tags=True)
    assert {n.split('.')[0] for n in tagged} == set(names) and 'resnet50_asap.tv_in1k_base' in tagged
