"""Write the generated parts of README.md and docs/*.md from the code and the committed result files.

A generated part sits between two marker comments; everything outside them is written by hand::

    <!-- generated:config-reference -->
    ...
    <!-- /generated -->

``<!-- generated:benchmark docs/results/benchmarks/layers_cpu.json -->`` passes an argument (a result file).
The parts and their sources:

* ``config-reference``: the fine-tuning config schema, from the dataclasses of ``timm_asap_lab.config``
  (field names, types, defaults) and their docstrings' ``Attributes:`` sections (meanings).
* ``architectures`` / ``architectures-short``: the registered architectures, from timm's registry after
  ``import timm_asap`` (public API only: ``timm.list_models``, ``timm.list_pretrained``,
  ``get_pretrained_cfg``, the entrypoint's ``__module__``).
* ``coverage``: the conversion coverage over timm's families, from the committed output of
  ``timm-asap coverage`` (``docs/results/coverage/coverage.json``).
* ``benchmark FILE``: a benchmark table with its command, machine and date, from a committed result file
  (``docs/results/benchmarks/*.json``; make one from a tool's Markdown table with ``--add-result``).
* ``study-results DIR``: a study's table from a result folder such as ``docs/results/study/cpu``
  (``summary.md`` as the study writes it, plus ``run.json`` with command, machine, date and wall time); a
  "not measured yet" notice while absent.

Usage::

    python scripts/gen_docs.py            # rewrite every generated part in place
    python scripts/gen_docs.py --check    # exit 1 naming each file whose generated parts are out of date
    python scripts/gen_docs.py --figure   # also redraw docs/img/aliasing.png (a few seconds on the CPU)
    python scripts/gen_docs.py --add-result docs/results/benchmarks/NAME.json --table table.md \\
        --title '...' --command '...' --machine '...' --date 2026-12-01   # then run it again without options
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import typing
from pathlib import Path
from typing import Callable

from timm_asap._files import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = ('README.md', 'docs/*.md')
RESULTS = ROOT / 'docs' / 'results'
FIGURE = ROOT / 'docs' / 'img' / 'aliasing.png'
FIGURE_COMMAND = 'python scripts/gen_docs.py --figure'

BLOCK = re.compile(r'^(<!-- generated:(?P<name>[\w-]+)(?: (?P<arg>[^>]*?))? -->\n)(?P<body>.*?)^(<!-- /generated -->)',
                   re.S | re.M)


class DocsError(RuntimeError):
    """A marker names an unknown part, or a part's source file is missing or malformed."""


# ---------------------------------------------------------------------------------------------------- helpers

def md_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    """A Markdown table; ``align`` holds '---' or '---:' per column."""
    align = align or ['---'] * len(header)
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(align) + '|']
    lines += ['| ' + ' | '.join(str(c).replace('|', '/').replace('\n', ' ') for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def _rst_to_md(text: str) -> str:
    return re.sub(r'``(.+?)``', r'`\1`', text)


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it, else as given."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DocsError(f"{_shown(path)}: result file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DocsError(f"{_shown(path)}: not valid JSON ({e})") from None


# ---------------------------------------------------------------------------------------------- config schema

def _docstring_attributes(cls) -> dict[str, str]:
    """``name -> text`` from a Google-style ``Attributes:`` section (continuation lines joined)."""
    doc = (cls.__doc__ or '').expandtabs()
    attrs: dict[str, str] = {}
    current = None
    in_section = False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped == 'Attributes:':
            in_section = True
            continue
        if not in_section:
            continue
        m = re.match(r'^\s{4,8}(\w+): (.*)$', line)
        if m and len(line) - len(line.lstrip()) <= 8:
            current = m.group(1)
            attrs[current] = m.group(2).strip()
        elif stripped and current:
            attrs[current] += ' ' + stripped
        elif not stripped and attrs:
            current = None
    return attrs


def _type_text(tp) -> str:
    text = tp if isinstance(tp, str) else getattr(tp, '__name__', str(tp).replace('typing.', ''))
    return text.replace(' | None', ' or null')


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return '(required)'
    if value is None:
        return '`null`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:.4g}`"
    if isinstance(value, list):
        return '`[' + ', '.join(f"{v:.4g}" if isinstance(v, float) else repr(v) for v in value) + ']`'
    return f"`{value!r}`"


def config_rows(cls, prefix: str = '') -> list[list[str]]:
    """Rows (key, type, default, meaning) for every leaf field of a config dataclass, nested ones expanded."""
    hints = typing.get_type_hints(cls)
    meanings = _docstring_attributes(cls)
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints.get(f.name, f.type)
        if dataclasses.is_dataclass(tp):
            rows += config_rows(tp, key + '.')
            continue
        if f.name not in meanings:
            raise DocsError(f"{cls.__module__}.{cls.__name__}.{f.name}: no entry in the docstring's Attributes section")
        rows.append([f"`{key}`", _type_text(f.type), _default_text(f), _rst_to_md(meanings[f.name])])
    return rows


def gen_config_reference(arg: str | None) -> str:
    from timm_asap_lab.config import RunConfig

    rows = config_rows(RunConfig)
    intro = (f"{len(rows)} keys, from `timm_asap_lab.config.RunConfig` and the docstrings of its sections "
             "(`ModelConfig`, `DataConfig`, `TrainConfig`, `HubConfig`).")
    return intro + '\n\n' + md_table(['Key', 'Type', 'Default', 'Meaning'], rows)


# ------------------------------------------------------------------------------------------------ the registry

def registered_architectures() -> list[str]:
    """Architectures whose timm entrypoint lives in the timm_asap package, in timm's order."""
    import timm
    import timm_asap  # noqa: F401  (registers the architectures)
    from timm.models import model_entrypoint

    return [n for n in timm.list_models() if model_entrypoint(n).__module__.split('.')[0] == 'timm_asap']


def _published_project_tags(arch: str) -> list[str]:
    """Tags of ``arch`` that timm lists as pretrained and that are not zero-shot conversions of a base."""
    import timm

    return [t for t in timm.list_pretrained(f'{arch}.*') if not t.endswith('_base')]


def _default_loads(arch: str) -> tuple[str, str]:
    """(kind, text) of what ``pretrained=True`` on the bare architecture loads: base / project / none."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    tag = getattr(cfg, 'tag', None)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        return 'none', 'no weights: raises `WeightsNotAvailableError`'
    if tag and tag.endswith('_base'):
        return 'base', f"`{tag}`: `{cfg.hf_hub_id or cfg.url}` converted zero-shot"
    if f'{arch}.{tag}' in _published_project_tags(arch):
        return 'project', f"`{tag}`: `{cfg.hf_hub_id}`"
    return 'none', f"no weights: `{tag}` is not published (raises `WeightsNotAvailableError`)"


def _families() -> list[tuple[str, list[str], str | None]]:
    """(family name, its registered architectures, converted base) in registry order."""
    from timm_asap.models import base_architecture

    archs = registered_architectures()
    names = set(archs)
    families: dict[str, list[str]] = {}
    for a in archs:
        families.setdefault(base_architecture(a), []).append(a)
    out = []
    for base, members in families.items():
        members.sort(key=lambda a: (a != base, a.endswith('_flc')))
        out.append((base, members, base if base not in names or any(a != base for a in members) else None))
    return out


def _family_label(base: str, members: list[str]) -> str:
    variants = [a for a in members if a != base]
    text = ' / '.join(f"`{a}`" if i == 0 else f"`{a[len(base):]}`" for i, a in enumerate(variants))
    return (f"`{base}` (baseline), " + text) if base in members and variants else (text or f"`{base}`")


REGISTRY_PARTS = frozenset({'architectures', 'architectures-short'})
TIMM_VERSION = re.compile(r'registered by `import timm_asap` \(timm ([^)\s]+)\)')


def recorded_timm_version() -> str | None:
    """The timm version the committed architecture table was generated with (its tag lists follow timm's)."""
    m = TIMM_VERSION.search((ROOT / 'docs' / 'models.md').read_text())
    return m.group(1) if m else None


def gen_architectures(arg: str | None) -> str:
    import timm
    from timm.models import get_pretrained_cfg, model_entrypoint

    rows = []
    for base, members, _ in _families():
        arch = next((a for a in members if a != base), members[0])
        cfg = get_pretrained_cfg(arch)
        converts = base if arch != base else '-'
        published = sorted({t for a in members for t in _published_project_tags(a)})
        loadable = len(timm.list_pretrained(f'{arch}.*'))  # its base tags and its published tags
        rows.append([
            _family_label(base, members), f"`{converts}`" if converts != '-' else '-', _default_loads(arch)[1],
            str(loadable), ', '.join(f"`{t}`" for t in published) or 'none published',
            'x'.join(map(str, cfg.input_size)) if cfg is not None else '',
            f"`{model_entrypoint(arch).__module__.split('.')[-1]}`"])
    total = len(registered_architectures())
    return (f"{total} architectures registered by `import timm_asap` (timm {timm.__version__}).\n\n"
            + md_table(['architecture', 'converts', '`pretrained=True` loads', 'tags that load', 'robust weights',
                        'input', 'timm module'], rows, ['---', '---', '---', '---:', '---', '---', '---'])
            + '\n\n' + _zero_shot_text())


def _zero_shot_text() -> str:
    """What a checkpoint "converted zero-shot" is worth as it loads, with the measured figures (one place: the registry's)."""
    from timm_asap.models.registry import ZERO_SHOT_BASE_TOP1, ZERO_SHOT_TOP1

    (asap, asap_fixed, _), (flc, flc_fixed, _) = ZERO_SHOT_TOP1['asap'], ZERO_SHOT_TOP1['flc']
    return (f"\"Converted zero-shot\": the base's weights, loaded unchanged into the converted architecture: a "
            f"starting point that loses accuracy until fine-tuned (on the study's network {asap:.1f} % ASAP and "
            f"{flc:.1f} % FLC against the base's {ZERO_SHOT_BASE_TOP1:.1f} %; {asap_fixed:.1f} % / {flc_fixed:.1f} % "
            f"after re-estimating BatchNorm with `timm_asap.recalibrate_norm`).")


def gen_architectures_short(arg: str | None) -> str:
    from timm.models import get_pretrained_cfg

    groups: dict[tuple, dict] = {}
    for base, members, _ in _families():
        arch = next((a for a in members if a != base), members[0])
        kind, text = _default_loads(arch)
        g = groups.setdefault((kind, base in members), dict(bases=[], published=set(), example=arch))
        if base == 'resnet50':
            g['example'] = arch
        g['bases'].append(base)
        g['published'] |= {t for a in members for t in _published_project_tags(a)}
    rows = []
    for (kind, cifar), g in groups.items():
        names = ', '.join(g['bases'])
        label = (f"{names} (32x32 baselines) and their `_asap` / `_flc` variants" if cifar
                 else f"`_asap` / `_flc` variants of {names}")
        cfg = get_pretrained_cfg(g['example'])
        example = f"e.g. `{g['example']}` loads `{cfg.hf_hub_id or cfg.url}` (tag `{cfg.tag}`)" if cfg else ''
        loads = {'base': f"the base timm checkpoint, converted zero-shot (fine-tune before use); {example}",
                 'project': f"weights trained with ASAP/FLC by this project; {example}",
                 'none': 'nothing: random initialisation only (`pretrained=True` raises `WeightsNotAvailableError`)'}
        rows.append([label, loads[kind], ', '.join(f"`{t}`" for t in sorted(g['published'])) or 'none published yet'])
    published = set().union(*(g['published'] for g in groups.values()))
    note = ('No ASAP or FLC weights trained by this project are published yet.' if not published else
            f"{len(published)} sets of weights trained by this project are published.")
    return (md_table(['architectures', '`pretrained=True` loads', 'robust weights'], rows) + '\n\n' + note + ' '
            + _zero_shot_text())


# ---------------------------------------------------------------------------------------------------- coverage

COVERAGE_JSON = RESULTS / 'coverage' / 'coverage.json'
COVERAGE_COMMAND = 'timm-asap coverage --output-dir docs/results/coverage --no-progress'


def gen_coverage(arg: str | None) -> str:
    from timm_asap_lab.tools.coverage import CoverageRow, rows_to_markdown

    data = _read_json(ROOT / arg if arg else COVERAGE_JSON)
    rows = [CoverageRow(**r) for r in data['rows']]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1

    def table(selected):
        return '\n'.join(line for line in rows_to_markdown(selected).splitlines()
                         if line and not line.startswith('Totals:'))

    rest = [r for r in rows if r.status != 'ok']
    ok = [r for r in rows if r.status == 'ok']
    summary = ', '.join(f"{counts.get(s, 0)} {s}" for s in ('ok', 'partial', 'fail', 'skipped'))
    return (f"Measured with timm {data.get('timm')}, torch {data.get('torch')}, pool {data.get('pool')} "
            f"(`{COVERAGE_COMMAND}`): **{summary}** over {len(rows)} families.\n\n"
            f"Families where something is left unconverted, failed or was skipped:\n\n{table(rest)}\n\n"
            f"<details><summary>The {len(ok)} families where everything matches</summary>\n\n{table(ok)}\n\n</details>")


# --------------------------------------------------------------------------------------------------- results

NUMBER = re.compile(r'^[\d.]+x?( / [\d.]+)?( \([\d.]+\))?$')
RESULT_KEYS = ('title', 'command', 'machine', 'date', 'columns', 'rows')


def gen_benchmark(arg: str | None) -> str:
    if not arg:
        raise DocsError("generated:benchmark needs a result file, e.g. <!-- generated:benchmark docs/results/... -->")
    data = _read_json(ROOT / arg)
    missing = [k for k in RESULT_KEYS if k not in data]
    if missing:
        raise DocsError(f"{arg}: missing {missing}; a result file has {list(RESULT_KEYS)} (+ software, notes)")
    meta = f"Command: `{data['command']}`. Machine: {data['machine']}"
    meta += f"; {data['software']}" if data.get('software') else ''
    meta += f". Date: {data['date']}."
    numeric = [all(NUMBER.match(str(row[i])) for row in data['rows']) for i in range(len(data['columns']))]
    align = ['---:' if n else '---' for n in numeric]
    text = f"**{data['title']}.** {meta}\n\n{md_table(data['columns'], data['rows'], align)}"
    if data.get('notes'):
        text += '\n\n' + data['notes']
    return text


def parse_md_table(text: str) -> tuple[list[str], list[list[str]]]:
    """Header and body cells of the first Markdown table in ``text``."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith('|')]
    if len(lines) < 2:
        raise DocsError('no Markdown table found (lines starting with |)')
    cells = [[c.strip() for c in ln.strip('|').split('|')] for ln in lines]
    return cells[0], [row for row in cells[2:]]


def add_result(path: Path, table: Path, title: str, command: str, machine: str, date: str,
               software: str = '', notes: str = '') -> Path:
    """Write a benchmark result file from a Markdown table a tool printed."""
    header, rows = parse_md_table(table.read_text())
    data = dict(title=title, command=command, machine=machine, date=date, software=software, notes=notes,
                columns=header, rows=rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + '\n')
    return path


def gen_study_results(arg: str | None) -> str:
    if not arg:
        raise DocsError("generated:study-results needs a result folder, e.g. "
                        "<!-- generated:study-results docs/results/study/cpu -->")
    folder = ROOT / arg
    if not folder.is_dir():
        raise DocsError(f"{arg}: study result folder not found (create it, empty until a result is recorded)")
    summary, run = folder / 'summary.md', folder / 'run.json'
    if not summary.is_file():
        return (f"**Not measured yet.** No study result is recorded in `{arg}/`. Once the `summary.md` a study "
                "run writes to its output folder and a `run.json` with its command, machine, date and wall time "
                "are committed there, it appears here.")
    meta = _read_json(run)
    missing = [k for k in ('command', 'machine', 'date', 'wall_time') if k not in meta]
    if missing:
        raise DocsError(f"{arg}/run.json: missing {missing}; it holds command, machine, date and wall_time")
    tables = '\n'.join(ln for ln in summary.read_text().splitlines() if not ln.startswith('# '))
    return (f"Command: `{meta['command']}`. Machine: {meta['machine']}. Date: {meta['date']}. "
            f"Wall time: {meta['wall_time']}.\n\n{tables.strip()}")


GENERATORS: dict[str, Callable[[str | None], str]] = {
    'config-reference': gen_config_reference,
    'architectures': gen_architectures,
    'architectures-short': gen_architectures_short,
    'coverage': gen_coverage,
    'benchmark': gen_benchmark,
    'study-results': gen_study_results,
}


# ---------------------------------------------------------------------------------------------------- driver

def doc_files() -> list[Path]:
    files = []
    for pattern in DOC_FILES:
        files += sorted(ROOT.glob(pattern))
    return files


def render(text: str, where: str = '', keep: frozenset[str] = frozenset()) -> str:
    """``text`` with every generated part replaced by what its generator writes now (parts in ``keep`` as they are)."""
    def replace(m: re.Match) -> str:
        name = m.group('name')
        if name not in GENERATORS:
            raise DocsError(f"{where}: unknown generated part {name!r}; known: {sorted(GENERATORS)}")
        if name in keep:
            return m.group(0)
        body = GENERATORS[name](m.group('arg'))
        return f"{m.group(1)}{body.rstrip()}\n{m.group(5)}"

    return BLOCK.sub(replace, text)


def outdated(keep: frozenset[str] = frozenset()) -> dict[Path, str]:
    """Files whose generated parts (except those in ``keep``) differ from what the generators write, with the new text."""
    changed = {}
    for path in doc_files():
        old = path.read_text()
        new = render(old, str(path.relative_to(ROOT)), keep)
        if new != old:
            changed[path] = new
    return changed


def make_figure(path: Path = FIGURE) -> Path:
    """The aliasing view of resnet18 and its FLC/ASAP conversions (random weights, 8 scikit-image crops)."""
    import numpy as np
    import skimage.data
    import timm
    import torch

    import timm_asap  # noqa: F401
    from timm_asap_lab.evaluation import EvalImages, aliasing_view
    from timm_asap_lab.evaluation.report import plot_aliasing

    crops = []
    for image in (skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()):
        h, w = image.shape[:2]
        for top, left in ((0, 0), (h - 128, w - 128)):
            crops.append(np.ascontiguousarray(image[top:top + 128, left:left + 128, :3].transpose(2, 0, 1)))
    data = EvalImages(torch.from_numpy(np.stack(crops)), torch.zeros(len(crops), dtype=torch.long), name='skimage')
    models = []
    for arch in ('resnet18', 'resnet18_flc', 'resnet18_asap'):
        torch.manual_seed(0)
        models.append((arch, timm.create_model(arch, pretrained=False).eval()))
    rows = aliasing_view(models, data, count=len(crops), device='cpu', progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_aliasing(rows, path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description='Write the generated parts of README.md and docs/*.md.')
    p.add_argument('--check', action='store_true', help='change nothing; exit 1 if a file is out of date')
    p.add_argument('--figure', action='store_true', help=f'also redraw {FIGURE.relative_to(ROOT)}')
    p.add_argument('--add-result', type=Path, metavar='JSON', help='write a benchmark result file from --table')
    p.add_argument('--table', type=Path, help='a Markdown file holding the table a benchmark printed')
    for opt in ('title', 'command', 'machine', 'date', 'software', 'notes'):
        p.add_argument(f'--{opt}', default='')
    args = p.parse_args(argv)
    try:
        if args.add_result:
            missing = [o for o in ('table', 'title', 'command', 'machine', 'date') if not getattr(args, o)]
            if missing:
                p.error(f"--add-result needs --{', --'.join(missing)}")
            print(f"wrote {add_result(args.add_result, args.table, args.title, args.command, args.machine, args.date, args.software, args.notes)}")
            return 0
        if args.figure and not args.check:
            print(f"wrote {make_figure()}")
        changed = outdated()
    except DocsError as e:
        print(f"gen_docs: {e}", file=sys.stderr)
        return 2
    if args.check:
        for path in changed:
            print(f"out of date: {path.relative_to(ROOT)} (run: python scripts/gen_docs.py)")
        return 1 if changed else 0
    for path, text in changed.items():
        atomic_write_text(path, text)
        print(f"updated {path.relative_to(ROOT)}")
    if not changed:
        print('generated parts are up to date')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
