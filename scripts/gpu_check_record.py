"""Records the steps of ``scripts/gpu_check.sh`` and writes its result files (at most 8, small).

``gpu_check_record.py LOG STEP STATUS SECONDS OUTPUT_FILE COMMAND`` appends one step to LOG (JSON lines);
``gpu_check_record.py --write LOG OUT MODE BUDGET`` writes ``status.md``/``status.json`` and gathers the
steps' own files from the work folder (LOG's folder) into ``models.md``/``models.json``,
``profile.md``/``profile.json`` and ``study.md``. Run after every step, so results exist as each finishes.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

TAIL = 2500  # characters of each step's output kept in status.json / status.md


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f'.{path.name}.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)


def record(log: str, name: str, status: str, seconds: str, output: str, command: str) -> None:
    text = Path(output).read_text(errors='replace') if Path(output).is_file() else ''
    entry = dict(step=name, status=status, seconds=int(seconds), command=command, output_tail=text[-TAIL:])
    with open(log, 'a') as f:
        f.write(json.dumps(entry) + '\n')


def _fresh(target: Path, sources: list[Path]) -> bool:
    """Whether ``target`` exists and is newer than every source (then it need not be written again)."""
    return target.is_file() and all(target.stat().st_mtime >= p.stat().st_mtime for p in sources)


def _models(work: Path, out: Path) -> str | None:
    sources = sorted(work.glob('models_*/benchmark_models.json'))
    if not sources:
        return None
    if not _fresh(out / 'models.json', sources):
        runs = [json.loads(path.read_text()) for path in sources]
        _write(out / 'models.json', json.dumps({'runs': {p.parent.name: r for p, r in zip(sources, runs)}}, indent=1))
        _write(out / 'models.md', '\n\n'.join(f"### {p.parent.name}\n\n" + (p.parent / 'benchmark_models.md').read_text()
                                               for p in sources))
    return 'models.md, models.json'


def _profiles(work: Path, out: Path) -> str | None:
    sources = sorted(work.glob('profile_*/profile.json'))
    if not sources:
        return None
    if not _fresh(out / 'profile.json', sources):
        profiles = [p for path in sources for p in json.loads(path.read_text())['profiles']]
        _write(out / 'profile.json', json.dumps({'profiles': profiles}, indent=1))
        _write(out / 'profile.md', '\n\n'.join((p.parent / 'profile.md').read_text() for p in sources))
    return 'profile.md, profile.json'


def _study(work: Path, out: Path) -> tuple[str | None, dict | None]:
    summary, result = work / 'study' / 'summary.md', work / 'study' / 'study.json'
    if not summary.is_file():
        return None, None
    _write(out / 'study.md', summary.read_text())
    data = json.loads(result.read_text()) if result.is_file() else {}
    return 'study.md', {k: data.get(k) for k in ('size', 'estimate', 'timings', 'table', 'convergence', 'reload')}


def write(log: str, out_dir: str, mode: str, budget: str) -> None:
    out, work = Path(out_dir), Path(log).parent
    steps = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    files = {'models': _models(work, out), 'profile': _profiles(work, out)}
    files['study'], study = _study(work, out)
    cached = work / 'machine.json'
    if not cached.is_file():
        import torch
        _write(cached, json.dumps({'torch': torch.__version__, 'cpu_count': os.cpu_count(),
                                   'gpu': torch.cuda.get_device_name() if torch.cuda.is_available() else None}))
    machine = {**json.loads(cached.read_text()), 'mode': mode, 'budget_s': int(budget)}
    _write(out / 'status.json', json.dumps({'machine': machine, 'steps': steps, 'files': files, 'study': study},
                                           indent=1))
    lines = [f"# GPU check ({mode} mode, budget {budget} s)", '',
             f"torch {machine['torch']}, GPU: {machine['gpu'] or 'none'}, {machine['cpu_count']} CPU threads.", '',
             '| step | status | seconds |', '|---|---|---:|']
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in steps]
    lines += ['', 'Result files: ' + ', '.join(['status.md', 'status.json', 'layers.json']
                                               + [v for v in files.values() if v]) + '.']
    for s in steps:
        lines += ['', f"## {s['step']}: {s['status']} ({s['seconds']} s)", '', f"`{s['command']}`", '', '```',
                  s['output_tail'].strip()[-1500:], '```']
    _write(out / 'status.md', '\n'.join(lines) + '\n')


if __name__ == '__main__':
    if sys.argv[1] == '--write':
        write(*sys.argv[2:6])
    else:
        record(*sys.argv[1:7])
