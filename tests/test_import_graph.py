"""The core's dependency direction: layers <- models (conversion, registry) <- hub loading.

The core imports only torch, timm, safetensors and huggingface_hub (and the standard library), and
never the recipe config, training, evaluation, study, data or CLI modules, not even inside functions.
Checked twice: in a fresh interpreter (``sys.modules`` after importing and creating a model) and
statically (every import statement of every core module, wherever it stands).
"""
from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / 'timm_asap'

CORE = sorted(
    [PKG / '__init__.py', PKG / 'version.py', PKG / '_files.py', PKG / '_deprecation.py']
    + list((PKG / 'layers').glob('*.py'))
    + [p for p in (PKG / 'models').glob('*.py') if p.name not in ('benchmark.py', 'coverage.py')]
    + [PKG / 'hub' / n for n in ('__init__.py', 'errors.py', 'image_processor.py', 'integrity.py', 'load.py',
                                 'integration.py')])
# tools that live beside the models: they may use more third-party packages, never the upper layers
MODEL_TOOLS = [PKG / 'models' / 'benchmark.py', PKG / 'models' / 'coverage.py']
ALLOWED_THIRD_PARTY = {'torch', 'timm', 'safetensors', 'huggingface_hub'}
# the transformers loaders import transformers when called (they exist to use it); nowhere at module level
LAZY_TRANSFORMERS = {PKG / 'hub' / 'load.py', PKG / 'hub' / 'image_processor.py'}
# triton comes with torch's CUDA builds: the kernel module imports it and is itself imported by the Triton
# backend's functions on the first kernel call
TRITON_KERNEL = PKG / 'layers' / 'triton_kernel.py'
LAZY_TRITON = {PKG / 'layers' / 'triton_pool.py'}
FORBIDDEN = ('timm_asap.config', 'timm_asap.train', 'timm_asap.evaluation', 'timm_asap.study', 'timm_asap.cli',
             'timm_asap.data', 'timm_asap.hub_configs', 'timm_asap.hub.export', 'timm_asap.hub.card',
             'timm_asap.hub.upload', 'timm_asap.hub.results', 'timm_asap.hub.publishing', 'timm_asap.benchmark')


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path: Path, root: Path = ROOT) -> list[tuple[str, bool]]:
    """(absolute module name, at module level) of every import statement in ``path`` (a file below ``root``)."""
    tree = ast.parse(path.read_text(), str(path))
    module = _module_name(path, root)
    package = module if path.name == '__init__.py' else module.rpartition('.')[0]
    top_level = {id(n) for n in tree.body}
    for node in tree.body:  # imports under a module-level try/if count as module level too
        if isinstance(node, (ast.If, ast.Try)):
            top_level |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = importlib.util.resolve_name('.' * node.level + (node.module or ''), package) if node.level else node.module
            names = [f"{mod}.{a.name}" for a in node.names] if not node.module or node.level else [mod]
            out += [(n, id(node) in top_level) for n in names]
    return out


def _is_stdlib(name: str) -> bool:
    return name.split('.')[0] in sys.stdlib_module_names or name == '__future__'


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + '.') for f in FORBIDDEN)


@pytest.mark.parametrize('path', CORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_imports_only_the_core_and_its_libraries(path):
    bad = []
    for name, top in _imports(path):
        root = name.split('.')[0]
        if root == 'timm_asap':
            if _forbidden(name):
                bad.append(name)
        elif root == 'transformers':
            if path not in LAZY_TRANSFORMERS or top:
                bad.append(f"{name} (transformers: only inside the transformers loaders' functions)")
        elif root == 'triton':
            if path != TRITON_KERNEL and (path not in LAZY_TRITON or top):
                bad.append(f"{name} (triton: only in the kernel module and inside the Triton backend's functions)")
        elif not _is_stdlib(name) and root not in ALLOWED_THIRD_PARTY:
            bad.append(name)
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize('path', MODEL_TOOLS, ids=lambda p: str(p.relative_to(ROOT)))
def test_model_tools_do_not_import_the_upper_layers(path):
    bad = [n for n, _ in _imports(path) if _forbidden(n)]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_static_check_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / 'timm_asap' / 'models' / 'probe.py'
    probe.parent.mkdir(parents=True)
    probe.write_text("def f():\n    from ..config import load_config\n    import transformers\n")
    names = _imports(probe, tmp_path)
    assert ('timm_asap.config.load_config', False) in names and ('transformers', False) in names
    assert _forbidden('timm_asap.config.load_config')


_PROBE = r"""
import json, sys
import huggingface_hub, safetensors, timm, torch
stage = {'libraries': sorted(sys.modules)}
import timm_asap
stage['import timm_asap'] = sorted(sys.modules)
timm.create_model('resnet50_asap', device='meta')
timm.create_model('resnet18_cifar_asap', features_only=True)
stage["timm.create_model('resnet50_asap')"] = sorted(sys.modules)
import timm_asap.hub
timm_asap.hub.verify_safetensors
stage['import timm_asap.hub'] = sorted(sys.modules)
print(json.dumps(stage))
"""


def test_fresh_interpreter_imports_no_tool_and_no_other_library():
    """After torch, timm, safetensors and huggingface_hub, importing timm_asap and creating models adds
    only timm_asap's core modules (and standard-library ones): no tools, no transformers."""
    r = subprocess.run([sys.executable, '-c', _PROBE], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    stages = json.loads(r.stdout)
    libraries = set(stages.pop('libraries'))
    for stage, modules in stages.items():
        added = set(modules) - libraries
        tools = sorted(m for m in added if _forbidden(m))
        assert not tools, f"after {stage}: {tools}"
        others = sorted({m.split('.')[0] for m in added} - {'timm_asap'} - set(sys.stdlib_module_names))
        assert not others, f"after {stage}: {others}"
        if stage != 'import timm_asap.hub':
            assert 'timm_asap.hub' not in added, f"{stage} imported the Hub loaders"
