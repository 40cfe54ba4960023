"""Converting a user's own pretrained CNN: the shipped ``convert_asap.fmnist`` recipe fine-tunes the ASAP
variant of a base given as a run folder, a weights file, ``local-dir:`` or ``hf-hub:`` (offline cache).

A tiny narrowed preactresnet18 base is trained once (1 epoch, a few hundred fake Fashion-MNIST images);
every form of ``model.base`` must give a converted model that starts from exactly its weights, with the
base's recorded model_args, and the base as distillation teacher; bad bases are one line, exit 2.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import constants
from safetensors.torch import load_file

import timm_asap.models  # noqa: F401  (registers the architectures)
from timm_asap import hub as H
from timm_asap_lab import publish as P
from timm_asap_lab.cli.finetune import main
from timm_asap_lab.config import ConfigError, apply_overrides, config_from_dict, load_config
from timm_asap.hub.integrity import MODEL_ARGS_KEY, read_safetensors_header
from timm_asap_lab.train import (create_model_from_config, create_teacher, convert_from_base, finetune, load_base_model,
                             resolve_base, resolve_run_config_base)

from finetune_helpers import write_fake_fashion_mnist

pytestmark = pytest.mark.usefixtures('one_thread')

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / 'hub_configs' / 'convert_asap.fmnist.yaml'  # by path: the shipped name may resolve elsewhere
BASE_ARGS = {'channels': [8, 16, 32, 64], 'stem_chs': 8, 'layers': [1, 1, 1, 1]}
REPO = 'someone/preactresnet18_w8-fmnist'
FORMS = ('run', 'older-run', 'file', 'lone-file', 'pth', 'local-dir', 'hf-hub')


def recorded_args(form: str) -> dict:
    """The model_args a base of ``form`` records: timm's config.json export adds the classifier's pooling."""
    return {**BASE_ARGS, 'global_pool': 'avg'} if form in ('local-dir', 'hf-hub') else BASE_ARGS


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    """A trained base (run folder), its Hub folder, and the fake data."""
    root = tmp_path_factory.mktemp('convert')
    data = write_fake_fashion_mnist(root / 'data', n_train=256, n_test=32)
    cfg = config_from_dict({
        'model': {'architecture': 'preactresnet18', 'tag': 'fmnist', 'pool': 'none', 'num_classes': 10,
                  'in_chans': 1, 'img_size': 16, 'model_args': BASE_ARGS},
        'data': {'dataset': 'fashion_mnist', 'data_dir': str(data), 'val_split': 'test', 'workers': 0,
                 'download': False, 'mean': [0.2860], 'std': [0.3530], 'scale': [0.85, 1.0]},
        'train': {'epochs': 1, 'batch_size': 32, 'lr': 0.05, 'warmup_epochs': 0, 'amp_dtype': 'float32',
                  'tensorboard': False, 'seed': 0},
        'hub': {'repo_id': REPO, 'datasets': ['zalando-datasets/fashion_mnist']},
    })
    run = root / 'runs' / 'preactresnet18_w8' / 'seed0'
    finetune(cfg, run, device='cpu', progress=False)
    hub_folder = P.export_output_dir(run, root / 'hub', allow_no_eval=True)
    return root, run, hub_folder, data


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """huggingface_hub offline, with an empty cache of its own and an endpoint nobody listens on."""
    cache = tmp_path / 'hf_cache'
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(constants, 'ENDPOINT', 'http://127.0.0.1:9')
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    return cache


def _base_value(form: str, base, tmp_path: Path, cache: Path) -> list[str]:
    """``--set`` items that name the base in ``form``."""
    root, run, hub_folder, _ = base
    if form == 'run':
        return [f'model.base={run}']
    if form == 'older-run':  # written before weights recorded their model_args: the run's config.yaml has them
        older = Path(shutil.copytree(run, tmp_path / 'older'))
        meta = read_safetensors_header(run / 'model.safetensors')[1]
        H.save_safetensors(load_file(run / 'model.safetensors'), older / 'model.safetensors',
                           {k: v for k, v in meta.items() if k != MODEL_ARGS_KEY})
        assert MODEL_ARGS_KEY not in read_safetensors_header(older / 'model.safetensors')[1]
        return [f'model.base={older}']
    if form == 'file':
        return [f'model.base={run / "model.safetensors"}']
    if form == 'lone-file':  # no config.yaml beside it: the safetensors header says everything
        lone = tmp_path / 'lone' / 'my_base.safetensors'
        lone.parent.mkdir()
        shutil.copyfile(run / 'model.safetensors', lone)
        return [f'model.base={lone}']
    if form == 'pth':  # a plain state dict: its architecture is named in model.base
        pth = tmp_path / 'pth' / 'weights.pth'
        pth.parent.mkdir()
        torch.save(load_file(run / 'model.safetensors'), pth)
        return ['model.base=preactresnet18', f'model.base_file={pth}', f'model.model_args={json.dumps(BASE_ARGS)}']
    if form == 'local-dir':
        return [f'model.base=local-dir:{hub_folder}']
    H.seed_hub_cache(hub_folder, REPO, cache)
    return [f'model.base=hf-hub:{REPO}']


def _tiny(data: Path) -> list[str]:
    return [f'data.data_dir={data}', 'data.download=false', 'data.workers=0', 'data.train_subset=48',
            'data.val_subset=16', 'model.img_size=16', 'train.epochs=1', 'train.batch_size=16',
            'train.amp_dtype=float32', 'train.tensorboard=false']


@pytest.mark.parametrize('form', FORMS)
def test_every_base_form_starts_the_asap_model_from_the_base_weights(base, form, tmp_path, offline_cache):
    root, run, _, data = base
    cfg = apply_overrides(load_config(RECIPE), _tiny(data) + _base_value(form, base, tmp_path, offline_cache))
    resolved, source = resolve_run_config_base(cfg)
    assert source.architecture == 'preactresnet18' and source.num_classes == 10
    # the base's structure joins the run's model_args, so both build the narrowed network
    assert resolved.model.model_args == recorded_args(form)
    m = resolved.model
    model = create_model_from_config(resolved, pretrained_tag=False)
    base_model = load_base_model(m.base, m.num_classes, m.in_chans, m.base_file, m.model_args)
    convert_from_base(model, base_model)
    trained = load_file(run / 'model.safetensors')
    got = model.state_dict()
    assert got.keys() == trained.keys()
    for k, v in trained.items():
        assert torch.equal(got[k], v), k
    # the distillation teacher is the same base, loaded the same way, with its classifier
    teacher = create_teacher(resolved)
    assert teacher.head_loaded and not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())
    for k, v in teacher.model.state_dict().items():
        assert torch.equal(v, trained[k]), k
    assert type(teacher.model).__name__ == 'PreActResNet' and not any(
        'ASAP' in type(mod).__name__ for mod in teacher.model.modules())


@pytest.mark.parametrize('form', ('run', 'local-dir', 'hf-hub'))
def test_the_documented_command_fine_tunes_from_each_base(base, form, tmp_path, offline_cache, capsys):
    """``timm-asap finetune --config convert_asap.fmnist --set model.base=... --output ...`` (tiny data): with
    a learning rate of 0 the exported parameters are exactly the base's, and the teacher is the base."""
    _, run, _, data = base
    out = tmp_path / 'my_asap'
    argv = ['--config', str(RECIPE), '--set', *_base_value(form, base, tmp_path, offline_cache), *_tiny(data),
            'train.lr=0', 'train.warmup_lr=0', '--output', str(out), '--no-progress', '--device', 'cpu']
    assert main(argv) == 0, capsys.readouterr().err
    saved = yaml.safe_load((out / 'config.yaml').read_text())
    assert saved['model']['architecture'] == 'preactresnet18_asap' and saved['model']['model_args'] == recorded_args(form)
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['status'] == 'finished' and 0 <= metrics['history'][0]['val_teacher_agree'] <= 100
    exported, trained = load_file(out / 'model.safetensors'), load_file(run / 'model.safetensors')
    params = {k for k, _ in create_model_from_config(load_config(out / 'config.yaml')).named_parameters()}
    for k in params:  # BatchNorm running statistics move in training even at lr 0; parameters do not
        assert torch.equal(exported[k], trained[k]), k
    # the converted model's own file records its model_args: it can in turn serve as a base
    header = read_safetensors_header(out / 'model.safetensors')[1]
    assert json.loads(header[MODEL_ARGS_KEY]) == {**recorded_args(form), 'num_classes': 10, 'in_chans': 1,
                                                  'pool_mode': 'centered'}
    # resuming with the same command finds the finished run's settings unchanged
    assert main(argv + ['--resume']) == 0


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'Traceback' not in err, err
    assert err.startswith('timm-asap-finetune: error: '), err
    return err


@pytest.mark.parametrize('sets, status, words', [
    (['model.architecture=resnet18_cifar_asap'], 2,
     ["model.architecture 'resnet18_cifar_asap' is not a conversion of the base", "'preactresnet18'",
      'set model.architecture to preactresnet18_asap or preactresnet18_flc']),
    (['model.model_args={channels: [8, 16, 32, 32]}'], 2,
     ['model.model_args channels=[8, 16, 32, 32] disagrees with the base', 'channels=[8, 16, 32, 64]']),
    (['model.base=/nonexistent/base.safetensors'], 2,
     ["model.base '/nonexistent/base.safetensors': no such file or folder"]),
    (['model.base=someone/not-prefixed'], 2,
     ["no such file or folder (a Hub repository is written hf-hub:someone/not-prefixed)"]),
    (["model.base=''"], 2, ['distillation needs a teacher; set model.base to the base checkpoint']),
    (['model.base=preactresnet18'], 2, ["model.base 'preactresnet18': timm has no pretrained weights for it"]),
    (['model.base=hf-hub:someone/not-cached'], 3, ['offline mode (HF_HUB_OFFLINE=1) is on']),
])
def test_bad_bases_are_one_line(base, sets, status, words, tmp_path, offline_cache, capsys):
    _, run, _, data = base
    argv = ['--config', str(RECIPE), '--set', f'model.base={run}', *_tiny(data), *sets, '--output',
            str(tmp_path / 'out'), '--no-progress', '--device', 'cpu']
    assert main(argv) == status
    err = _one_error_line(capsys)
    for w in words:
        assert w in err, err
    assert not (tmp_path / 'out').exists()  # refused before anything was written


def test_a_file_that_does_not_record_its_architecture_is_named(base, tmp_path):
    _, run, _, _ = base
    pth = tmp_path / 'weights.pth'
    torch.save(load_file(run / 'model.safetensors'), pth)
    with pytest.raises(ConfigError, match=r"does not record its architecture .* set model.base to the architecture"):
        resolve_base(str(pth))
    with pytest.raises(ConfigError, match=r"model.base_file '.*' is given, so model.base must name"):
        resolve_base(f'local-dir:{tmp_path}', str(pth))
    with pytest.raises(ConfigError, match=r"holds weights of architecture 'preactresnet18' .* names 'resnet18_cifar'"):
        resolve_base('resnet18_cifar', str(run / 'model.safetensors'))
    folder = tmp_path / 'neither'
    folder.mkdir()
    (folder / 'notes.txt').write_text('x')
    with pytest.raises(ConfigError, match=r"neither a fine-tuning run .* nor a Hub folder .*'notes.txt'"):
        resolve_base(str(folder))


def test_a_damaged_base_file_is_refused_naming_it(base, tmp_path):
    _, run, _, _ = base
    bad = tmp_path / 'damaged.safetensors'
    blob = bytearray((run / 'model.safetensors').read_bytes())
    blob[-1] ^= 0xFF
    bad.write_bytes(bytes(blob))
    with pytest.raises(ConfigError, match=r"damaged.safetensors: tensor data sha256 .* the file is corrupted"):
        resolve_base(str(bad))


def test_other_normalisation_than_the_base_is_reported(base, caplog):
    _, run, _, data = base
    cfg = apply_overrides(load_config(RECIPE), _tiny(data) + [f'model.base={run}'])
    with caplog.at_level('WARNING', logger='timm_asap_lab.train.model'):
        resolve_run_config_base(cfg)
    assert not caplog.records  # the recipe normalises as the base was trained
    with caplog.at_level('WARNING', logger='timm_asap_lab.train.model'):
        resolve_run_config_base(apply_overrides(cfg, ['data.mean=[0.5]']))
    assert 'was trained with mean [0.286] / std [0.353], this run normalises with [0.5]' in caplog.text


def test_card_names_a_hub_base_and_publishing_accepts_a_local_one(base, tmp_path):
    from timm_asap_lab.publish.card import base_model_repo
    _, run, hub_folder, _ = base
    assert base_model_repo('hf-hub:org/name@v1') == 'org/name'
    assert base_model_repo('resnet50.tv_in1k') == 'timm/resnet50.tv_in1k'
    for local in (str(run), str(run / 'model.safetensors'), f'local-dir:{hub_folder}', 'runs/missing'):
        assert base_model_repo(local) is None, local
    cfg = apply_overrides(load_config(RECIPE), [f'model.base={run}'])
    P.check_publishable(cfg)  # a local base is named in the card text, not as card metadata
    with pytest.raises(ConfigError, match="model.base: 'preactresnet18' is not a timm checkpoint with a Hub id"):
        P.check_publishable(apply_overrides(cfg, ['model.base=preactresnet18']))
