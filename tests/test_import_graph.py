"""The repository's dependency direction, for every module: each has a floor and imports nothing above it.

The plugin (:mod:`timm_asap`: layers <- models <- hub loading) sits at the bottom and imports only
torch, timm, safetensors and huggingface_hub (and the standard library); the lab (:mod:`timm_asap_lab`)
builds on it, floor by floor (files and runtime <- recipe config <- data <- fine-tuning <- checkpoints
<- evaluation <- publishing <- the study and the tools <- the CLIs); scripts and tests stand on top.
Every import statement counts, at module level or inside a function. Checked statically (every file of
the repository) and in a fresh interpreter (``sys.modules`` after importing the plugin and creating models).
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

#: module (or package: every module below it) -> floor; a module may import only modules on its floor or below
FLOORS = {
    'timm_asap.version': 0,
    'timm_asap._files': 0,
    'timm_asap.layers': 1,
    'timm_asap.models': 2,
    'timm_asap.hub': 3,
    'timm_asap': 4,                         # the package itself: re-exports the layers and the models
    'timm_asap_lab': 10,                    # the package itself: the dependency check only
    'timm_asap_lab.files': 10,
    'timm_asap_lab.runtime': 10,
    'timm_asap_lab.tools.timing': 10,
    'timm_asap_lab.config': 11,
    'timm_asap_lab.hub_configs': 11,
    'timm_asap_lab.config_model': 12,
    'timm_asap_lab.data': 13,
    'timm_asap_lab.train': 14,
    'timm_asap_lab.checkpoints': 15,
    'timm_asap_lab.evaluation': 16,
    'timm_asap_lab.publish': 17,
    'timm_asap_lab.tools': 18,
    'timm_asap_lab.study_conversion': 18,
    'timm_asap_lab.study': 19,
    'timm_asap_lab.cli': 20,
    'timm_asap_lab.__main__': 20,
    'scripts': 30,
    'tests': 30,
}
PLUGIN_FLOOR = FLOORS['timm_asap']
ALLOWED_THIRD_PARTY = {'torch', 'timm', 'safetensors', 'huggingface_hub'}
# the transformers loaders import transformers when called (they exist to use it); nowhere at module level
LAZY_TRANSFORMERS = {'timm_asap.hub.load', 'timm_asap.hub.image_processor'}
# triton comes with torch's CUDA builds: the kernel module imports it and is itself imported by the Triton
# backend's functions on the first kernel call
TRITON_KERNEL = 'timm_asap.layers.triton_kernel'
LAZY_TRITON = {'timm_asap.layers.triton_pool'}


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def repository_modules(root: Path = ROOT) -> list[Path]:
    """Every Python file of the packages, the scripts and the tests."""
    return sorted(p for d in ('timm_asap', 'timm_asap_lab', 'scripts', 'tests') for p in (root / d).rglob('*.py'))


def floor(name: str) -> int | None:
    """The floor of a module (longest matching entry of :data:`FLOORS`), None for one outside the repository."""
    parts = name.split('.')
    for k in range(len(parts), 0, -1):
        if '.'.join(parts[:k]) in FLOORS:
            return FLOORS['.'.join(parts[:k])]
    return None


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


def upward_imports(path: Path, root: Path = ROOT) -> list[str]:
    """The imports of ``path`` that point above its floor, each as ``'name (floor n > m)'``."""
    own = floor(_module_name(path, root))
    bad = []
    for name, _ in _imports(path, root):
        target = floor(name) if name.split('.')[0] in ('timm_asap', 'timm_asap_lab') else None
        if target is not None and target > own:
            bad.append(f"{name} (floor {target} > {own})")
    return bad


def _third_party_problems(path: Path, module: str) -> list[str]:
    bad = []
    for name, top in _imports(path):
        top_name = name.split('.')[0]
        if top_name in ('timm_asap', 'timm_asap_lab') or name == '__future__' or top_name in sys.stdlib_module_names:
            continue
        if top_name == 'transformers':
            if module not in LAZY_TRANSFORMERS or top:
                bad.append(f"{name} (transformers: only inside the transformers loaders' functions)")
        elif top_name == 'triton':
            if module != TRITON_KERNEL and (module not in LAZY_TRITON or top):
                bad.append(f"{name} (triton: only in the kernel module and inside the Triton backend's functions)")
        elif top_name not in ALLOWED_THIRD_PARTY:
            bad.append(name)
    return bad


MODULES = repository_modules()


def test_every_module_has_a_floor():
    missing = [str(p.relative_to(ROOT)) for p in MODULES if floor(_module_name(p)) is None]
    assert MODULES and not missing, f"modules without a floor in FLOORS: {missing}"


@pytest.mark.parametrize('path', MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_points_above_the_module_floor(path):
    bad = upward_imports(path)
    assert not bad, f"{path.relative_to(ROOT)} imports above its floor: {bad}"


@pytest.mark.parametrize('path', [p for p in MODULES if floor(_module_name(p)) <= PLUGIN_FLOOR],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_plugin_imports_only_its_libraries(path):
    bad = _third_party_problems(path, _module_name(path))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize('planted, importer', [
    ('def f():\n    from timm_asap_lab.study import run_study\n', 'timm_asap/models/probe.py'),
    ('from ..evaluation import evaluate_models\n', 'timm_asap_lab/train/probe.py'),
    ('import timm_asap_lab.cli.main\n', 'timm_asap_lab/publish/probe.py'),
    ('from timm_asap_lab import files\n', 'timm_asap/hub/probe.py'),
])
def test_a_planted_upward_import_fails_the_check(tmp_path, planted, importer):
    probe = tmp_path / importer
    probe.parent.mkdir(parents=True)
    probe.write_text(planted)
    assert upward_imports(probe, tmp_path), planted
    probe.write_text('from timm_asap.layers import ASAP2d\n')  # downward: fine
    assert not upward_imports(probe, tmp_path)


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


def test_fresh_interpreter_imports_no_lab_module_and_no_other_library():
    """After torch, timm, safetensors and huggingface_hub, importing timm_asap and creating models adds
    only the plugin's modules (and standard-library ones): nothing of the lab, no transformers."""
    r = subprocess.run([sys.executable, '-c', _PROBE], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    stages = json.loads(r.stdout)
    libraries = set(stages.pop('libraries'))
    for stage, modules in stages.items():
        added = set(modules) - libraries
        others = sorted({m.split('.')[0] for m in added} - {'timm_asap'} - set(sys.stdlib_module_names))
        assert not others, f"after {stage}: {others}"
        if stage != 'import timm_asap.hub':
            assert 'timm_asap.hub' not in added, f"{stage} imported the Hub loaders"
