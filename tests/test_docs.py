"""The documentation stays true: generated parts match the code, examples run, links resolve.

* every part of README.md and docs/*.md between ``<!-- generated:... -->`` markers equals what
  ``scripts/gen_docs.py`` writes from the code and the committed result files;
* every ```python block runs (each on its own, in a temporary folder, offline), unless the line before it
  is ``<!-- skip-test: reason -->``: then it is reported as skipped with that reason;
* the README stays short and keeps the install/test commands that ``.ci/run`` reads;
* relative links point at files that exist.
"""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_gen_docs():
    spec = importlib.util.spec_from_file_location('gen_docs', ROOT / 'scripts' / 'gen_docs.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_docs = _load_gen_docs()
DOCS = gen_docs.doc_files()
FENCE = re.compile(r'^```(\w*)\n(.*?)^```\n', re.S | re.M)
SKIP = re.compile(r'<!-- skip-test: (.+?) -->\s*$')


def _python_blocks():
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            if m.group(1) != 'python':
                continue
            line = text.count('\n', 0, m.start()) + 1
            before = text[:m.start()].rstrip('\n').rsplit('\n', 1)[-1]
            skip = SKIP.search(before)
            where = f"{path.relative_to(ROOT)}:{line}"
            yield pytest.param(m.group(2), f"{where}: {skip.group(1)}" if skip else None, id=where)


def test_generated_parts_are_up_to_date():
    import timm

    # the architecture tables list timm's checkpoints per base model: with another timm release they differ
    # without anything here being wrong, so they are compared only under the timm they were generated with
    recorded = gen_docs.recorded_timm_version()
    keep = gen_docs.REGISTRY_PARTS if recorded and recorded != timm.__version__ else frozenset()
    changed = gen_docs.outdated(keep)
    assert not changed, (f"out of date: {[str(p.relative_to(ROOT)) for p in changed]}; "
                         "run `python scripts/gen_docs.py` and commit the result")
    if keep:
        pytest.skip(f"architecture tables generated with timm {recorded}, installed {timm.__version__}: not compared "
                    "(the other generated parts are up to date)")


def test_every_generated_part_is_known():
    for path in DOCS:
        for m in gen_docs.BLOCK.finditer(path.read_text()):
            assert m.group('name') in gen_docs.GENERATORS, f"{path}: unknown part {m.group('name')}"
    opened = sum(len(re.findall(r'^<!-- generated:', path.read_text(), re.M)) for path in DOCS)
    closed = sum(len(gen_docs.BLOCK.findall(path.read_text())) for path in DOCS)
    assert opened == closed, 'a <!-- generated:... --> marker has no matching <!-- /generated -->'


def test_render_replaces_stale_text_and_rejects_unknown_parts():
    stale = '<!-- generated:config-reference -->\n| old table |\n<!-- /generated -->\n'
    fresh = gen_docs.render(stale)
    assert '| old table |' not in fresh and '`data.label_names`' in fresh
    assert gen_docs.render(fresh) == fresh
    with pytest.raises(gen_docs.DocsError, match="unknown generated part 'no-such-part'"):
        gen_docs.render('<!-- generated:no-such-part -->\n<!-- /generated -->\n')


def test_config_reference_follows_the_docstrings():
    from timm_asap_lab.config import DataConfig, RunConfig

    rows = {r[0]: r for r in gen_docs.config_rows(RunConfig)}
    meaning = gen_docs._docstring_attributes(DataConfig)['label_names']
    assert rows['`data.label_names`'][3] == gen_docs._rst_to_md(meaning)
    assert rows['`train.distill.alpha`'][1:3] == ['float', '`0.5`']
    assert rows['`data.data_dir`'][1:3] == ['str or null', '`null`']


def test_architecture_table_lists_the_registry():
    import timm

    import timm_asap  # noqa: F401

    table = gen_docs.gen_architectures(None)
    for name in timm.list_models('*_asap'):
        assert f"`{name}`" in table
    assert gen_docs.registered_architectures()


def test_benchmark_result_files_are_complete_and_round_trip(tmp_path):
    files = sorted((ROOT / 'docs' / 'results' / 'benchmarks').glob('*.json'))
    assert files
    for f in files:
        data = json.loads(f.read_text())
        assert all(data.get(k) for k in gen_docs.RESULT_KEYS), f"{f.name}: every one of {gen_docs.RESULT_KEYS} is needed"
        assert all(len(row) == len(data['columns']) for row in data['rows']), f"{f.name}: ragged rows"
    table = tmp_path / 'table.md'
    table.write_text('noise\n| a | b |\n|---|---:|\n| x | 1.5x |\n')
    out = gen_docs.add_result(tmp_path / 'r.json', table, 'T', 'cmd', 'box', '2026-12-01')
    text = gen_docs.gen_benchmark(str(out))
    assert 'Command: `cmd`. Machine: box. Date: 2026-12-01.' in text and '| x | 1.5x |' in text
    with pytest.raises(gen_docs.DocsError, match='result file not found'):
        gen_docs.gen_benchmark('docs/results/benchmarks/missing.json')


def test_study_results_come_from_a_complete_result_folder(tmp_path):
    folders = sorted(p.parent for p in (ROOT / 'docs' / 'results' / 'study').glob('*/summary.md'))
    assert folders
    for folder in folders:
        text = gen_docs.gen_study_results(str(folder))
        assert text.startswith('Command: `timm-asap study') and '| model |' in text, folder.name
    assert gen_docs.gen_study_results(str(tmp_path)).startswith('**Not measured yet.**')
    (tmp_path / 'summary.md').write_text('# t\n| model |\n')
    (tmp_path / 'run.json').write_text(json.dumps({'command': 'c', 'machine': 'm', 'date': 'd'}))
    with pytest.raises(gen_docs.DocsError, match=r"missing \['wall_time'\]"):
        gen_docs.gen_study_results(str(tmp_path))
    with pytest.raises(gen_docs.DocsError, match='needs a result folder'):
        gen_docs.gen_study_results(None)
    with pytest.raises(gen_docs.DocsError, match='study result folder not found'):
        gen_docs.gen_study_results(str(tmp_path / 'typo'))
    (tmp_path / 'run.json').unlink()
    with pytest.raises(gen_docs.DocsError, match=f"{tmp_path / 'run.json'}: result file not found"):
        gen_docs.gen_study_results(str(tmp_path))


def test_readme_is_short_and_keeps_the_ci_commands():
    text = (ROOT / 'README.md').read_text()
    assert len(text.splitlines()) <= 200
    for marker in ('<!-- main-command -->', '<!-- test-command -->'):
        after = text.split(marker, 1)[1].lstrip('\n').splitlines()
        assert after[0] == '```bash' and after[1].strip() and after[2] == '```', marker


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file (lower case, punctuation dropped, spaces as '-')."""
    text = FENCE.sub('', path.read_text())
    return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-') for h in re.findall(r'^#+ (.+)$', text, re.M)}


def test_relative_links_resolve():
    link = re.compile(r'\]\(([^)#\s]+)(?:#([^)]*))?\)')
    missing = []
    for path in DOCS:
        for target, anchor in link.findall(path.read_text()):
            if re.match(r'^[a-z]+:', target):
                continue
            resolved = (path.parent / target).resolve()
            rel = resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else str(resolved)
            if not resolved.exists():
                missing.append(f"{path.relative_to(ROOT)} -> {target}")
            elif anchor and resolved.suffix == '.md' and anchor not in _anchors(resolved):
                missing.append(f"{path.relative_to(ROOT)} -> {target}#{anchor} (no such heading)")
    assert not missing


def test_every_figure_names_its_command():
    text = (ROOT / 'README.md').read_text()
    for image in re.findall(r'!\[[^]]*\]\(([^)]+)\)', text):
        assert (ROOT / image).is_file(), image
        assert gen_docs.FIGURE_COMMAND in text


@pytest.mark.parametrize('code, skip', list(_python_blocks()))
def test_python_block_runs(code, skip, tmp_path, monkeypatch):
    if skip:
        pytest.skip(skip)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    import huggingface_hub.constants  # read at its import: the environment variable alone comes too late
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    exec(compile(code, '<docs block>', 'exec'), {'__name__': '__docs__'})


def test_figure_command_runs(tmp_path):
    pytest.importorskip('skimage')
    out = gen_docs.make_figure(tmp_path / 'aliasing.png')
    assert out.stat().st_size > 10_000
