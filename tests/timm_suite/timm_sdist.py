"""timm's own test module, taken from the sdist of the installed timm version, and this package's model names.

timm publishes its ``tests/`` in the source distribution on PyPI. :func:`load_timm_test_models` downloads
``timm-<version>.tar.gz`` for the installed ``timm.__version__`` with ``pip download`` (once; it is cached),
extracts ``tests/test_models.py`` and imports it under a private module name, so timm's test functions can be
called over the names this package registers.

Cache folder: ``$TIMM_ASAP_TIMM_SDIST_DIR``, else ``$XDG_CACHE_HOME/timm-asap/timm-sdist`` (default
``~/.cache/timm-asap/timm-sdist``). To run offline, put ``timm-<version>.tar.gz`` there.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

import pytest
import timm
import torch
from timm.models import model_entrypoint

CACHE_ENV = 'TIMM_ASAP_TIMM_SDIST_DIR'
# the files of timm's tests/ that are used; test_models.py imports only timm, torch and torchvision
MEMBERS = ('tests/test_models.py',)
_PIP_TIMEOUT_S = 300


class SdistFetchError(RuntimeError):
    """timm's sdist could not be downloaded or read; the message says what failed and how to provide it."""


def cache_dir() -> Path:
    """The folder holding ``timm-<version>.tar.gz`` and its extracted test files."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache')
    return base / 'timm-asap' / 'timm-sdist'


def plugin_model_names(include_tags: bool = False) -> list[str]:
    """Every name in timm's registry whose entrypoint this package defines (``*_asap``, ``*_flc``, CIFAR-size).

    Args:
        include_tags: list ``arch.tag`` names (as timm's ``test_model_default_cfgs`` does) instead of architectures.
    """
    names = timm.list_models(include_tags=include_tags)
    return [n for n in names if model_entrypoint(n.split('.', 1)[0]).__module__.startswith('timm_asap.')]


def _download(version: str, folder: Path) -> Path:
    """``pip download`` timm's sdist into ``folder`` (through a temporary folder, then renamed into place)."""
    target = folder / f'timm-{version}.tar.gz'
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix='.download-') as tmp:
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:',
               '--disable-pip-version-check', f'timm=={version}', '-d', tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SdistFetchError(f"`{' '.join(cmd)}` did not complete: {e}") from None
        got = Path(tmp) / target.name
        if proc.returncode != 0 or not got.is_file():
            tail = '\n'.join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise SdistFetchError(f"`{' '.join(cmd)}` exited with status {proc.returncode} and no {target.name}; "
                                  f"without network access, put {target.name} into {folder} (or point "
                                  f"{CACHE_ENV} at a folder holding it). pip said:\n{tail}")
        os.replace(got, target)
    return target


def _extract(archive: Path, version: str, dest: Path) -> None:
    """Write the :data:`MEMBERS` of ``archive`` under ``dest`` (each file written whole, then renamed)."""
    try:
        with tarfile.open(archive) as tar:
            for member in MEMBERS:
                src = tar.extractfile(f'timm-{version}/{member}')
                if src is None:
                    raise SdistFetchError(f"{archive}: timm-{version}/{member} is not a regular file")
                out = dest / member
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_name(f'.{out.name}.{os.getpid()}.tmp')  # open(): the umask's file mode
                with open(tmp, 'wb') as f:
                    f.write(src.read())
                os.replace(tmp, out)
    except (tarfile.TarError, KeyError, EOFError, OSError) as e:
        raise SdistFetchError(f"{archive} cannot be read as timm {version}'s sdist ({type(e).__name__}: {e}); "
                              f"delete it to download it again") from None


def timm_tests_dir(version: str | None = None) -> Path:
    """The extracted ``tests/`` folder of timm ``version`` (default: the installed one), fetched if missing.

    Raises:
        SdistFetchError: the sdist could not be downloaded or read.
    """
    version = version or timm.__version__
    folder = cache_dir()
    dest = folder / f'timm-{version}'
    if all((dest / m).is_file() for m in MEMBERS):
        return dest / 'tests'
    archive = folder / f'timm-{version}.tar.gz'
    if not archive.is_file():
        archive = _download(version, folder)
    _extract(archive, version, dest)
    return dest / 'tests'


def load_timm_test_models() -> ModuleType:
    """Import timm's ``tests/test_models.py`` of the installed timm version.

    Its ``pytest.mark.parametrize`` lists are built at import from ``timm.list_models()``; they are not used
    (its functions are called directly), so ``import timm_asap`` before this only makes them include our names.

    Raises:
        SdistFetchError: the sdist could not be downloaded or read.
    """
    path = timm_tests_dir() / 'test_models.py'
    spec = importlib.util.spec_from_file_location('timm_upstream_test_models', path)
    module = importlib.util.module_from_spec(spec)
    # The module switches TorchScript's executor at import (for its scripting tests, which are not run here);
    # these private torch setters are the only way to read and restore the previous modes for the other tests.
    executor = torch._C._jit_set_profiling_executor(True)
    mode = torch._C._jit_set_profiling_mode(True)
    try:
        with warnings.catch_warnings():
            # timm's CI markers (base, cfg, features, ...) are registered in timm's pyproject, not here
            warnings.simplefilter('ignore', pytest.PytestUnknownMarkWarning)
            spec.loader.exec_module(module)
    finally:
        torch._C._jit_set_profiling_executor(executor)
        torch._C._jit_set_profiling_mode(mode)
    return module
