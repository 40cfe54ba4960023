"""timm's own model tests over this package's registry: ``import timm_asap`` first, then timm's test module.

``import timm_asap`` runs before anything reads timm's registry, so the names it registers are in
``timm.list_models()`` for the parametrisation of ``test_timm_models.py``. The ``timm_tests`` fixture fetches
timm's sdist (see :mod:`timm_sdist`) once per session; when that fails every test that needs it fails with
the reason and how to provide the file.
"""
import timm_asap  # noqa: F401  (registers the architectures before any registry lookup)

import pytest
from timm_sdist import SdistFetchError, load_timm_test_models


@pytest.fixture(scope='session')
def timm_tests():
    """timm's ``tests/test_models.py`` of the installed timm version, imported (a failed fetch fails the test)."""
    try:
        return load_timm_test_models()
    except SdistFetchError as e:
        error = e
    pytest.fail(f"timm's own test suite could not be fetched: {error}", pytrace=False)
