"""Bad inputs that would lose or mix files: an output folder that is not ours to replace (publishing) and a
folder another process is writing (fine-tuning, the study, the corruption cache, publishing). Each is refused
with one line naming the folder and what is there (or who holds it), and the user's files stay byte for byte."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import timm_asap.models  # noqa: F401  (registers the architectures)
from timm_asap._files import LOCK_NAME
from timm_asap_lab.files import FolderInUseError, OutputFolderError, check_replaceable, folder_lock, staging_dir, replace_dir
from timm_asap_lab.cli.publish import main as publish_main
from timm_asap_lab.config import save_config
from timm_asap_lab.evaluation import EvalImages
from timm_asap_lab.evaluation.cache import CorruptionCache, iter_corrupted_sets
from timm_asap_lab.train import finetune

from conftest_hub import HUB_CONFIG, hub, hub_env  # noqa: F401  (an in-process Hub)
from finetune_helpers import tiny_config, write_fake_fashion_mnist

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / 'finetune_worker.py'
PUBLISH = [HUB_CONFIG, '--dry-run', '--allow-no-eval']
RUN_FILES = {'best.pth', 'config.yaml', 'last.pth', 'metrics.json', 'model.safetensors', 'summary.csv', 'train.log'}

HOLD = """import sys
from timm_asap_lab.files import folder_lock
with folder_lock(sys.argv[1], 'test holder'):
    print('locked', flush=True)
    sys.stdin.readline()
"""


def _env() -> dict:
    return {**os.environ, 'PYTHONPATH': os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]),
            'OMP_NUM_THREADS': '1'}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (what must survive a refusal unchanged)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


@contextlib.contextmanager
def held_elsewhere(folder: Path):
    """Another process holding ``folder``'s lock until the block ends; yields its pid."""
    p = subprocess.Popen([sys.executable, '-c', HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
    try:
        line = p.stdout.readline()
        assert line == 'locked\n', p.stderr.read()
        yield p.pid
    finally:
        p.stdin.close()
        p.wait()


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    return write_fake_fashion_mnist(tmp_path_factory.mktemp('fmnist'), n_train=32, n_test=16)


@pytest.fixture(scope='module')
def run(data, tmp_path_factory) -> Path:
    """A real (tiny) fine-tuning output folder: checkpoints, weights, config, records."""
    out = tmp_path_factory.mktemp('runs') / 'base'
    finetune(tiny_config(data, train={'epochs': 1}), out, device='cpu', progress=False)
    assert {p.name for p in out.iterdir()} >= RUN_FILES
    return out


@pytest.fixture(scope='module')
def worker_config(data, tmp_path_factory) -> Path:
    """A tiny run's config with enough updates for a worker to pause in the middle of its epoch."""
    cfg = tiny_config(data, train={'epochs': 1, 'batch_size': 4})
    return save_config(cfg, tmp_path_factory.mktemp('cfg') / 'config.yaml')


def copy_run(run: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run, dest))


def refused(capsys, code: int) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ---- publishing into a folder that is not ours ----------------------------------------------------------

def test_publish_into_the_run_folder_itself_is_refused(run, tmp_path, capsys):
    own = copy_run(run, tmp_path / 'pub' / 'self')
    before = snapshot(own)
    err = refused(capsys, publish_main(PUBLISH + ['--checkpoint', str(own), '--output', str(own)]))
    assert err == (f"timm-asap-publish: error: refusing to replace {own}: it holds the checkpoint "
                   f"{own / 'model.safetensors'} that timm-asap publish reads; choose an empty or new folder")
    assert snapshot(own) == before


def test_publish_into_a_parent_of_the_run_is_refused(run, tmp_path, capsys):
    parent = tmp_path / 'pub' / 'parent'
    copy_run(run, parent / 'run')
    copy_run(run, parent / 'run2')
    (parent / 'notes.txt').write_text('my notes\n')
    before = snapshot(parent)
    err = refused(capsys, publish_main(PUBLISH + ['--checkpoint', str(parent / 'run'), '--output', str(parent)]))
    assert f"refusing to replace {parent}: it holds the checkpoint {parent / 'run' / 'model.safetensors'}" in err
    # a checkpoint from elsewhere: the folder's own content is named
    err = refused(capsys, publish_main(PUBLISH + ['--checkpoint', str(run), '--output', str(parent)]))
    assert err == (f"timm-asap-publish: error: {parent} holds 3 entries not written by timm-asap publish "
                   f"(notes.txt, run/, run2/); nothing was replaced; choose an empty or new folder")
    assert snapshot(parent) == before


def test_publish_into_an_unrelated_folder_with_one_file_is_refused(run, tmp_path, capsys):
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'file.txt').write_bytes(b'keep me\x00\x01')
    err = refused(capsys, publish_main(PUBLISH + ['--checkpoint', str(run), '--output', str(other)]))
    assert err == (f"timm-asap-publish: error: {other} holds 1 entry not written by timm-asap publish (file.txt); "
                   "nothing was replaced; choose an empty or new folder")
    assert snapshot(other) == {'file.txt': b'keep me\x00\x01'}


@pytest.mark.parametrize('output', ['.', '..'])
def test_publish_into_the_working_directory_is_refused(run, tmp_path, monkeypatch, capsys, output):
    here = tmp_path / 'work' / 'here'
    here.mkdir(parents=True)
    (here / 'mine.txt').write_text('mine\n')
    monkeypatch.chdir(here)
    before = snapshot(tmp_path / 'work')
    err = refused(capsys, publish_main(PUBLISH + ['--checkpoint', str(run), '--output', output]))
    it = 'it is' if output == '.' else 'it contains'
    assert err == (f"timm-asap-publish: error: refusing to replace {output}: {it} the working directory ({here}); "
                   "choose an empty or new folder")
    assert snapshot(tmp_path / 'work') == before  # no stray '..xxxx.old' folder, nothing moved
    assert sorted(p.name for p in (tmp_path / 'work').iterdir()) == ['here']


def test_republish_replaces_a_folder_publishing_wrote(run, tmp_path, capsys):
    hub = tmp_path / 'hub'
    assert publish_main(PUBLISH + ['--checkpoint', str(run), '--output', str(hub)]) == 0
    first = snapshot(hub)
    (hub / LOCK_NAME).write_text('')  # a lock file a killed publish left behind is ours too
    (hub / 'README.md').write_text('an older card\n')
    assert publish_main(PUBLISH + ['--checkpoint', str(run), '--output', str(hub), '--set', 'hub.license=mit']) == 0
    second = snapshot(hub)
    assert set(second) == set(first) and 'license: mit' in second['README.md'].decode()
    capsys.readouterr()
    (hub / 'notes.txt').write_text('added by hand\n')  # now it holds something publishing did not write
    before = snapshot(hub)
    err = refused(capsys, publish_main(PUBLISH + ['--checkpoint', str(run), '--output', str(hub)]))
    assert f"{hub} holds 1 entry not written by timm-asap publish (notes.txt)" in err
    assert snapshot(hub) == before


def test_publish_into_a_folder_another_process_writes_is_refused(run, tmp_path, capsys):
    hub = tmp_path / 'hub'
    with held_elsewhere(hub) as pid:
        err = refused(capsys, publish_main(PUBLISH + ['--checkpoint', str(run), '--output', str(hub)]))
        assert err.startswith(f"timm-asap-publish: error: {hub} is in use by another process (test holder, pid {pid} ")
        assert 'wait until it has finished, or choose another folder' in err
        assert sorted(p.name for p in hub.iterdir()) == [LOCK_NAME]
    assert publish_main(PUBLISH + ['--checkpoint', str(run), '--output', str(hub)]) == 0
    assert not (hub / LOCK_NAME).exists()


def test_a_replaced_folder_stays_locked_until_its_writer_is_done(tmp_path):
    # publishing holds the folder from before it is written until the upload has read it: the lock moves
    # into the new folder when it replaces the old one
    target = tmp_path / 'hub'
    rules = dict(writer='timm-asap publish', foreign=lambda folder: [])
    for content in ('first', 'second'):
        with folder_lock(target, 'timm-asap publish'):
            with staging_dir(target) as staged:
                (staged / 'a.txt').write_text(content)
                replace_dir(staged, target, **rules)
            assert sorted(p.name for p in target.iterdir()) == [LOCK_NAME, 'a.txt']
            proc = subprocess.run([sys.executable, '-c', HOLD, str(target)], input='\n', capture_output=True,
                                  text=True, env=_env(), cwd=REPO)
            assert proc.returncode != 0 and f"{target} is in use by another process (timm-asap publish, pid " \
                f"{os.getpid()} " in proc.stderr
        assert sorted(p.name for p in target.iterdir()) == ['a.txt'] and (target / 'a.txt').read_text() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ['hub']


def test_a_lock_file_left_in_a_hub_folder_is_not_uploaded(run, tmp_path, hub_env):
    from timm_asap import hub as H
    from timm_asap_lab import publish as P
    folder = P.export_output_dir(run, tmp_path / 'hub', config=HUB_CONFIG, allow_no_eval=True)
    (folder / LOCK_NAME).write_text('{"pid": 1}\n')  # left by a publish killed after moving its folder in
    repo = f'{hub_env.org}/left-lock'
    result = P.upload_hub_folder(folder, repo)
    assert LOCK_NAME not in hub_env.server.files(repo) and LOCK_NAME not in result.files
    assert {p.name for p in folder.iterdir() if p.name != LOCK_NAME} <= set(hub_env.server.files(repo))
    snapshot_dir = H.seed_hub_cache(folder, repo, tmp_path / 'cache')
    assert not (snapshot_dir / LOCK_NAME).exists()


@pytest.mark.parametrize('where', ['root', 'home', 'symlink', 'file'])
def test_the_guard_refuses_what_is_never_replaced(tmp_path, monkeypatch, where):
    rules = dict(writer='a writer', foreign=lambda folder: [])  # even a folder that counts as ours
    home = tmp_path / 'home'
    (home / 'me').mkdir(parents=True)
    monkeypatch.setenv('HOME', str(home / 'me'))
    target = {'root': Path('/'), 'home': home, 'symlink': tmp_path / 'link', 'file': tmp_path / 'file'}[where]
    (tmp_path / 'file').write_text('x')
    (tmp_path / 'elsewhere').mkdir()
    (tmp_path / 'link').symlink_to(tmp_path / 'elsewhere')
    reason = {'root': 'it is the file system root', 'home': f"it contains your home folder ({home / 'me'})",
              'symlink': f"it is a symbolic link to {tmp_path / 'elsewhere'}",
              'file': 'it is a file, not a folder'}[where]
    with pytest.raises(OutputFolderError, match=f"^{re.escape(f'refusing to replace {target}: {reason}; ')}"):
        check_replaceable(target, **rules)
    staged = tmp_path / 'staged'
    staged.mkdir()
    with pytest.raises(OutputFolderError, match=re.escape(reason)):  # replace_dir checks the guard itself
        replace_dir(staged, target, **rules)
    assert staged.is_dir() and (tmp_path / 'file').read_text() == 'x' and (home / 'me').is_dir()
    assert (tmp_path / 'link').is_symlink() and (tmp_path / 'elsewhere').is_dir()


# ---- a folder in use by another writer --------------------------------------------------------------------

def _worker(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(config), str(out), '--threads', '1', *extra],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), cwd=REPO)


def _finetune_cli(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'timm_asap_lab', 'finetune', '--config', str(config), '--output',
                           str(out), '--device', 'cpu', '--no-progress', '--log-level', 'WARNING', *extra],
                          capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600)


def test_second_finetune_into_a_folder_in_use_is_refused(worker_config, tmp_path):
    out = tmp_path / 'run'
    first = _worker(worker_config, out, '--pause-at', '2')
    try:
        assert first.stdout.readline() == 'paused\n', first.stderr.read()
        before = snapshot(out)
        second = _finetune_cli(worker_config, out, '--seed', '2')
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert f"{out} is in use by another process (timm-asap finetune, pid {first.pid} " in lines[0]
        assert str(WORKER) in lines[0]  # the holder's command
        assert snapshot(out) == before
    finally:
        first.stdin.close()
        assert first.wait() == 0, first.stderr.read()
    # the folder holds the first run only: its config, checkpoint and exported weights agree
    assert 'seed: 7' in (out / 'config.yaml').read_text()
    from safetensors.torch import load_file
    weights = load_file(out / 'model.safetensors')
    exported = torch.load(out / f"{json.loads((out / 'metrics.json').read_text())['export']['kind']}.pth",
                          map_location='cpu', weights_only=False)
    assert exported['config']['train']['seed'] == 7
    assert all(torch.equal(weights[k], exported['state_dict'][k]) for k in weights)
    assert not (out / LOCK_NAME).exists()


def test_the_lock_of_a_killed_finetune_is_free(worker_config, data, tmp_path):
    out = tmp_path / 'run'
    first = _worker(worker_config, out, '--pause-at', '1')
    try:
        assert first.stdout.readline() == 'paused\n', first.stderr.read()
        holder = re.escape(f"in use by another process (timm-asap finetune, pid {first.pid} ")
        with pytest.raises(FolderInUseError, match=holder):
            finetune(tiny_config(data), out, device='cpu', progress=False)
        first.kill()  # SIGKILL: no handler runs, the lock file stays behind
        assert first.wait() == -signal.SIGKILL
    finally:
        first.stdin.close()
    assert (out / LOCK_NAME).is_file()
    done = _finetune_cli(worker_config, out)
    assert done.returncode == 0, done.stderr
    assert not (out / LOCK_NAME).exists() and (out / 'model.safetensors').is_file()


def test_torchrun_ranks_share_rank_0s_lock_and_its_refusal(worker_config, tmp_path):
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nnodes', '1', '--nproc_per_node', '2',
           str(WORKER), str(worker_config), str(out), '--threads', '1']
    env = {**_env(), 'TORCH_CPP_LOG_LEVEL': 'ERROR'}
    with held_elsewhere(out) as pid:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
        assert proc.returncode != 0
        assert f"{out} is in use by another process (test holder, pid {pid} " in proc.stderr
        assert "rank 0 could not lock the output folder" in proc.stderr  # rank 1 stops too, instead of waiting
        assert not (out / 'config.yaml').exists()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]  # rank 1 is not refused by its own rank 0
    assert (out / 'model.safetensors').is_file() and not (out / LOCK_NAME).exists()


def test_study_folder_in_use_is_refused(tmp_path):
    out = tmp_path / 'study'
    out.mkdir()
    (out / 'options.json').write_text('{"mine": true}\n')
    with held_elsewhere(out) as pid:
        proc = subprocess.run([sys.executable, '-m', 'timm_asap_lab', 'study', '--output', str(out), '--device', 'cpu',
                               '--no-progress'], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert f"{out} is in use by another process (test holder, pid {pid} " in lines[0]
    assert snapshot(out) == {'options.json': b'{"mine": true}\n'}


def _images(n: int = 4) -> EvalImages:
    g = torch.Generator().manual_seed(0)
    return EvalImages(torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=g),
                      torch.zeros(n, dtype=torch.long), list(range(n)), 'test')


def test_corruption_cache_in_use_is_refused_while_sets_are_written(tmp_path):
    cache = CorruptionCache(tmp_path / 'cache')
    jobs = [('gaussian_noise', 1), ('contrast', 2)]
    with held_elsewhere(cache.root) as pid:
        sets = iter_corrupted_sets(_images(), jobs, 0, 'cifar', cache, workers=0)
        with pytest.raises(FolderInUseError, match=f"in use by another process \\(test holder, pid {pid} "):
            next(sets)
        assert sorted(p.name for p in Path(cache.root).iterdir()) == [LOCK_NAME]  # nothing written
    made = dict(iter_corrupted_sets(_images(), jobs, 0, 'cifar', cache, workers=0))
    assert len(made) == 2 and not (Path(cache.root) / LOCK_NAME).exists()
    with held_elsewhere(cache.root):  # a complete cache is read without its lock
        stats = {}
        again = dict(iter_corrupted_sets(_images(), jobs, 0, 'cifar', cache, workers=0, stats=stats))
    assert stats == {'cached': 2, 'generated': 0} and all(torch.equal(again[j], made[j]) for j in made)


def test_the_same_process_does_not_refuse_itself(data, tmp_path):
    # the study holds its folder and trains runs and writes its cache inside it; nested holds are one lock
    out = tmp_path / 'study'
    cfg = tiny_config(data, train={'epochs': 1})
    with folder_lock(out, 'timm-asap study'):
        finetune(cfg, out / 'runs' / 'a', device='cpu', progress=False)
        with folder_lock(out, 'timm-asap study'):
            finetune(cfg, out, device='cpu', progress=False)
            assert (out / LOCK_NAME).is_file()
        assert (out / LOCK_NAME).is_file()  # still held by the outer block
        dict(iter_corrupted_sets(_images(), [('contrast', 1)], 0, 'cifar', CorruptionCache(out / 'cache'), workers=0))
        proc = subprocess.run([sys.executable, '-c', HOLD, str(out)], input='\n', capture_output=True, text=True,
                              env=_env(), cwd=REPO)  # another process is still refused
        assert proc.returncode != 0 and f"{out} is in use by another process (timm-asap study, pid {os.getpid()} " \
            in proc.stderr
    assert not (out / LOCK_NAME).exists() and (out / 'model.safetensors').is_file()
    assert (out / 'runs' / 'a' / 'model.safetensors').is_file()


def test_a_lock_on_a_missing_folder_leaves_nothing_when_nothing_was_written(tmp_path):
    target = tmp_path / 'new' / 'hub'
    with folder_lock(target, 'timm-asap publish'), staging_dir(target) as staged:
        assert target.is_dir()
        (staged / 'x').write_text('x')
    assert not target.exists() and sorted(p.name for p in (tmp_path / 'new').iterdir()) == []


def test_a_file_system_without_locks_is_written_with_a_warning(tmp_path, monkeypatch, caplog):
    import errno
    from timm_asap_lab import files as _files

    def no_locks(fd, operation):  # what flock answers on a mount without locks
        raise OSError(errno.ENOLCK, 'No locks available')

    monkeypatch.setattr(_files.fcntl, 'flock', no_locks)
    target = tmp_path / 'hub'
    with folder_lock(target, 'timm-asap publish'), staging_dir(target) as staged:
        (staged / 'a.txt').write_text('a')
        replace_dir(staged, target, writer='timm-asap publish', foreign=lambda folder: [])
    assert sorted(p.name for p in target.iterdir()) == ['a.txt']
    assert f"{target}: the file system does not support locks (No locks available)" in caplog.text


# --- the study and the evaluation write their files only into an empty folder or one of their own -------------

def test_study_and_evaluate_refuse_a_folder_holding_someone_elses_files(tmp_path, capsys):
    from timm_asap_lab.cli.evaluate import main as evaluate_main
    from timm_asap_lab.cli.study import main as study_main

    folder = tmp_path / 'mine'
    folder.mkdir()
    (folder / 'summary.md').write_text('my notes\n')
    assert study_main(['--output', str(folder), '--device', 'cpu', '--no-progress']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"timm-asap study: error: {folder} holds 1 entries not written by timm-asap study (summary.md); "
                   f"its files would be written among them: choose an empty or new folder"]
    assert evaluate_main(['--model', 'resnet18', '--dataset', 'fashion_mnist', '--output', str(folder)]) == 2
    assert 'not written by timm-asap evaluate (summary.md)' in capsys.readouterr().err
    assert (folder / 'summary.md').read_text() == 'my notes\n' and sorted(p.name for p in folder.iterdir()) == ['summary.md']
