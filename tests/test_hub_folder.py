"""Hub folder building, integrity checks, model card, publish CLI (dry run) and the transformers
integration, without any server (see test_hub_server.py for the Hub round trips)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard, constants

import timm_asap.models  # noqa: F401  (registers the architectures)
from timm_asap import hub as H
from timm_asap_lab import publish as P
from timm_asap_lab.cli.publish import main as publish_main
from timm_asap_lab.config import ConfigError, apply_overrides, list_hub_configs, load_config
from timm_asap.hub import IntegrityError, UnregisteredArchitectureError
from timm_asap_lab.publish.errors import HubPublishError, MissingEvaluationError

from conftest_hub import HUB_CONFIG, make_eval_dir, make_train_dir

ASAP = 'resnet18_cifar_asap.fmnist'
BASELINE = 'resnet18_cifar.fmnist'
REPO = 'timm-asap/resnet18_cifar_asap.fmnist'
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures('no_network')  # nothing here may reach a Hub


@pytest.fixture(scope='module')
def run_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp('run')
    return make_train_dir(root / 'train'), make_eval_dir(root / 'eval', {ASAP: 91.25, BASELINE: 90.5})


@pytest.fixture(scope='module')
def folder(run_dirs, tmp_path_factory):
    train, ev = run_dirs
    return P.export_output_dir(train, tmp_path_factory.mktemp('out') / 'hub', eval_dir=ev)


@pytest.fixture(scope='module')
def reference(run_dirs):
    train, _ = run_dirs
    return P.load_trained_model(load_config(train / 'config.yaml'), train / 'model.safetensors')


def images(n: int = 3, chans: int = 1) -> torch.Tensor:
    return torch.rand(n, chans, 32, 32, generator=torch.Generator().manual_seed(n))


def copy_folder(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / 'copy'))


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith('.'))


# ---- the folder -------------------------------------------------------------------------------------

def test_folder_holds_safetensors_config_card_recipe_results(folder):
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob('*') if p.is_file())
    assert files == ['README.md', 'config.json', 'model.safetensors', 'plots/shift_consistency.png', 'results.json',
                     'results.md', 'run_config.yaml']
    assert not leftovers(folder.parent)
    assert load_config(folder / 'run_config.yaml').name == ASAP


def test_config_json_is_timm_format(folder, reference):
    cfg = json.loads((folder / 'config.json').read_text())
    assert cfg['architecture'] == 'resnet18_cifar_asap'
    assert cfg['num_classes'] == 10 and cfg['num_features'] == reference.num_features
    assert cfg['global_pool'] == 'avg'
    assert cfg['label_names'][0] == 'T-shirt/top' and len(cfg['label_names']) == 10
    # JSON-safe reconstruction arguments; num_classes only at the top level (transformers passes it itself)
    assert cfg['model_args'] == json.loads(json.dumps(cfg['model_args']))
    assert cfg['model_args']['in_chans'] == 1 and cfg['model_args']['pool_mode'] == 'centered'
    assert 'num_classes' not in cfg['model_args']
    # the paper's placement is the default: not in model_args (older timm-asap versions rebuild it), recorded below
    assert 'pool_position' not in cfg['model_args']
    assert cfg['timm_asap']['pool_position'] == 'before' and cfg['timm_asap']['mode'] == 'centered'
    p = cfg['pretrained_cfg']
    assert p['input_size'] == [1, 32, 32] and p['mean'] == [0.286] and p['std'] == [0.353]
    assert p['crop_pct'] == 1.0 and p['interpolation'] == 'bilinear' and p['license'] == 'apache-2.0'
    assert not any(k in p for k in ('hf_hub_id', 'url', 'file'))
    assert cfg['image_processor_type'] == 'TimmAsapImageProcessor'  # one grey channel


def test_model_card_metadata_and_sections(folder):
    card = ModelCard.load(folder / 'README.md')
    d = card.data
    assert d.library_name == 'timm' and d.license == 'apache-2.0' and d.pipeline_tag == 'image-classification'
    assert {'timm', 'asap', 'image-classification'} <= set(d.tags)
    assert d.datasets == ['zalando-datasets/fashion_mnist']
    assert d.base_model is None  # trained from scratch
    values = {r.metric_name: r.metric_value for r in d.eval_results}
    assert values['Clean top-1 accuracy'] == 91.25 and values['Shift consistency'] == 90.0
    assert all(r.dataset_type == 'zalando-datasets/fashion_mnist' for r in d.eval_results)
    text = card.text
    usage = text[text.index('## Usage'):]
    assert usage.index('import timm_asap') < usage.index('import timm\n')
    assert "timm.create_model('hf-hub:timm-asap/resnet18_cifar_asap.fmnist', pretrained=True)" in text
    assert "pipeline('image-classification', model='timm-asap/resnet18_cifar_asap.fmnist')" in text
    assert '| resnet18_cifar.fmnist | 90.50 |' in text  # the evaluation table, baseline included
    assert '![shift consistency](plots/shift_consistency.png)' in text
    recipe = text[text.index('## Training recipe'):text.index('## Citation')]
    assert 'lr 0.05' in recipe and '20' in recipe and 'run_config.yaml' in recipe
    assert '@article{grabinski2023asap' in text and 'arXiv:2307.09804' in text


def test_card_base_model_for_imagenet_configs():
    from timm_asap_lab.publish.card import card_metadata
    meta = card_metadata(load_config('resnet50_asap.ft_in1k'), None)
    assert meta.base_model == 'timm/resnet50.tv_in1k' and meta.license == 'bsd-3-clause'
    assert meta.eval_results is None


@pytest.mark.parametrize('name', sorted(list_hub_configs()))
def test_shipped_hub_configs_carry_what_publishing_needs(name):
    P.check_publishable(load_config(name))


def test_publishable_check_lists_problems():
    cfg = load_config(HUB_CONFIG)
    cfg.hub.repo_id, cfg.hub.license, cfg.data.label_names, cfg.data.dataset = 'noslash', '', None, 'folder'
    with pytest.raises(ConfigError) as e:
        P.check_publishable(cfg)
    for key in ('hub.repo_id', 'hub.license', 'data.label_names'):
        assert key in str(e.value)


def test_local_dir_round_trip_gives_the_same_logits(folder, reference):
    x = images()
    with torch.no_grad():
        ref = reference(x)
        assert torch.equal(H.load_hub_folder(folder)(x), ref)
        assert torch.equal(timm.create_model(f'local-dir:{folder}', pretrained=True).eval()(x), ref)


def test_band_mode_travels_in_config_json(tmp_path):
    """'reference' differs from 'centered' only in the pooling band (14 -> 8 at 28 px), not in the weights."""
    train = make_train_dir(tmp_path / 'train', overrides=['model.mode=reference', 'model.img_size=28'])
    folder = P.export_output_dir(train, tmp_path / 'hub', allow_no_eval=True)
    assert json.loads((folder / 'config.json').read_text())['model_args']['pool_mode'] == 'reference'
    trained = P.load_trained_model(load_config(train / 'config.yaml'), train / 'model.safetensors')
    centered = timm.create_model('resnet18_cifar_asap', num_classes=10, in_chans=1, pool_mode='centered')
    centered.load_state_dict(trained.state_dict())
    x = images(2)[..., :28, :28]
    with torch.no_grad():
        assert torch.equal(H.load_hub_folder(folder)(x), trained(x))
        assert not torch.allclose(centered.eval()(x), trained(x))


def test_placement_travels_in_config_json_and_weights(tmp_path):
    """pool_position='after' computes another function with the same tensors: config.json's model_args and the
    weights' header record it, the folder rebuilds it exactly, and the weights refuse the other placement."""
    train = make_train_dir(tmp_path / 'train', overrides=['model.pool_position=after'])
    folder = P.export_output_dir(train, tmp_path / 'hub', allow_no_eval=True)
    config = json.loads((folder / 'config.json').read_text())
    assert config['model_args']['pool_position'] == 'after' and config['timm_asap']['pool_position'] == 'after'
    assert 'pool_position=after' in config['pretrained_cfg']['notes'][0]
    _, metadata, _ = H.read_safetensors_header(folder / 'model.safetensors')
    assert json.loads(metadata['timm_asap.pooling']) == ["ASAP2d(padding='one', mode='centered')", "pool_position='after'"]
    assert "placed `after` the strided convolutions" in (folder / 'README.md').read_text()
    trained = P.load_trained_model(load_config(train / 'config.yaml'), train / 'model.safetensors')
    before = timm.create_model('resnet18_cifar_asap', num_classes=10, in_chans=1)
    before.load_state_dict(trained.state_dict())
    x = images(2)
    with torch.no_grad():
        assert torch.equal(H.load_hub_folder(folder)(x), trained(x))
        assert torch.equal(timm.create_model(f'local-dir:{folder}', pretrained=True).eval()(x), trained(x))
        # random weights give near-constant logits: compare the feature maps the placement changes
        assert not torch.allclose(before.eval().forward_features(x), trained.forward_features(x))
    # the same weights described as the paper's placement (pool_position dropped from model_args): refused
    bad = copy_folder(folder, tmp_path)
    _edit_config(model_args={k: v for k, v in config['model_args'].items() if k != 'pool_position'})(bad)
    for check in (H.verify_hub_folder, H.load_hub_folder, lambda f: H.load_model(f'local-dir:{f}')):
        with pytest.raises(IntegrityError, match=r"placed after the strided convolutions \(pool_position='after'.*"
                                                 r"builds it before them.*set pool_position='after'"):
            check(bad)


def test_run_config_placement_must_match_the_model():
    from timm_asap_lab.config_model import check_pooling, create_model_from_config
    cfg = apply_overrides(load_config(HUB_CONFIG), ['model.pool_position=after'])
    model = create_model_from_config(cfg)
    assert timm_asap.models.pool_position_of(model) == 'after'
    check_pooling(model, 'asap', 'centered', 'the model', 'after')
    with pytest.raises(ConfigError, match=r"model.pool_position: 'before', but .* strided convolutions pool after"):
        check_pooling(model, 'asap', 'centered', 'the model', 'before')
    # model_args naming another placement than model.pool_position: refused with the key to set
    clash = apply_overrides(load_config(HUB_CONFIG), ["model.model_args={'pool_position': 'after'}"])
    with pytest.raises(ConfigError, match="set model.pool_position"):
        create_model_from_config(clash)
    with pytest.raises(ConfigError, match=r"model.pool_position: must be one of \['before', 'after'\], got 'late'"):
        apply_overrides(load_config(HUB_CONFIG), ['model.pool_position=late'])
    with pytest.raises(ConfigError, match="model.pool is 'none'"):
        apply_overrides(load_config(HUB_CONFIG), ['model.pool=none', 'model.pool_position=after'])


# ---- refusing, atomicity ---------------------------------------------------------------------------

def test_refuses_without_evaluation_unless_allowed(run_dirs, tmp_path):
    train, _ = run_dirs
    with pytest.raises(MissingEvaluationError, match='allow-no-eval'):
        P.export_output_dir(train, tmp_path / 'hub')
    assert not (tmp_path / 'hub').exists() and not leftovers(tmp_path)
    out = P.export_output_dir(train, tmp_path / 'hub', allow_no_eval=True)
    card = ModelCard.load(out / 'README.md')
    assert card.data.eval_results is None and 'without evaluation results' in card.text
    assert not (out / 'results.json').exists()


def test_results_must_name_this_model(run_dirs, tmp_path):
    train, _ = run_dirs
    ev = make_eval_dir(tmp_path / 'eval', {'asap': 91.0, 'baseline': 90.0}, plots=False)
    with pytest.raises(HubPublishError, match="evaluated: \\['asap', 'baseline'\\]"):
        P.export_output_dir(train, tmp_path / 'hub', eval_dir=ev)
    out = P.export_output_dir(train, tmp_path / 'hub', eval_dir=ev, eval_model='asap')
    values = {r.metric_name: r.metric_value for r in ModelCard.load(out / 'README.md').data.eval_results}
    assert values['Clean top-1 accuracy'] == 91.0


def test_failed_build_keeps_the_previous_folder(folder, run_dirs, tmp_path, monkeypatch):
    train, ev = run_dirs
    out = copy_folder(folder, tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def broken(*args, **kwargs):
        raise RuntimeError('card failure')
    monkeypatch.setattr('timm_asap_lab.publish.export.build_model_card', broken)
    with pytest.raises(RuntimeError, match='card failure'):
        P.export_output_dir(train, out, eval_dir=ev)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not leftovers(tmp_path)


@pytest.mark.parametrize('exchange', [True, False], ids=['exchange', 'rename-aside'])
def test_replace_dir_swaps_in_the_new_folder(tmp_path, monkeypatch, exchange):
    from timm_asap_lab import files as _io
    if not exchange:
        monkeypatch.setattr(_io, '_exchange', lambda a, b: False)
    elif not _io._exchange(Path(tempfile.mkdtemp(dir=tmp_path)), Path(tempfile.mkdtemp(dir=tmp_path))):
        pytest.skip('no renameat2(RENAME_EXCHANGE) on this system')
    target = tmp_path / 'out' / 'hub'
    target.parent.mkdir()
    ours = dict(writer='this test', foreign=lambda folder: [])  # every folder here counts as the test's own
    for content in ('first', 'second'):
        staging = Path(tempfile.mkdtemp(dir=target.parent))
        (staging / f'{content}.txt').write_text(content)
        _io.replace_dir(staging, target, **ours)
        assert [p.name for p in target.iterdir()] == [f'{content}.txt'] and not staging.exists()
    assert [p.name for p in target.parent.iterdir()] == ['hub']
    (tmp_path / 'file').write_text('x')
    with pytest.raises(_io.OutputFolderError, match='not a folder'):
        _io.replace_dir(target, tmp_path / 'file', **ours)


def test_truncated_checkpoint_is_refused_and_nothing_written(run_dirs, tmp_path):
    train, ev = run_dirs
    bad = Path(shutil.copytree(train, tmp_path / 'train'))
    data = (bad / 'model.safetensors').read_bytes()
    (bad / 'model.safetensors').write_bytes(data[:len(data) // 2])
    with pytest.raises(IntegrityError, match='truncated') as e:
        P.export_output_dir(bad, tmp_path / 'hub', eval_dir=ev)
    assert e.value.path == str(bad / 'model.safetensors') and str(bad / 'model.safetensors') in str(e.value)
    assert not (tmp_path / 'hub').exists() and not leftovers(tmp_path)


# ---- integrity of a folder -------------------------------------------------------------------------

def _truncate(folder):
    p = folder / 'model.safetensors'
    p.write_bytes(p.read_bytes()[:-1000])


def _flip_data_byte(folder):
    p = folder / 'model.safetensors'
    data = bytearray(p.read_bytes())
    data[-12345] ^= 0x40
    p.write_bytes(bytes(data))


def _garble_header(folder):
    p = folder / 'model.safetensors'
    data = bytearray(p.read_bytes())
    data[12:20] = b'\xff' * 8
    p.write_bytes(bytes(data))


def _string_offsets(folder):
    p = folder / 'model.safetensors'
    data = p.read_bytes()
    n = int.from_bytes(data[:8], 'little')
    header = json.loads(data[8:8 + n])
    name = next(k for k in header if k != '__metadata__')
    header[name]['data_offsets'] = [str(v) for v in header[name]['data_offsets']]
    raw = json.dumps(header).encode()
    p.write_bytes(len(raw).to_bytes(8, 'little') + raw + data[8 + n:])


def _edit_config(**changes):
    def edit(folder):
        p = folder / 'config.json'
        cfg = json.loads(p.read_text())
        cfg.update(changes)
        p.write_text(json.dumps(cfg))
    return edit


@pytest.mark.parametrize('damage, file, words', [
    (_truncate, 'model.safetensors', 'truncated'),
    (_flip_data_byte, 'model.safetensors', 'sha256'),
    (_garble_header, 'model.safetensors', 'not valid JSON'),
    (_string_offsets, 'model.safetensors', 'malformed header entry'),
    (_edit_config(architecture='preactresnet18_asap'), 'model.safetensors', 'does not fit'),
    (_edit_config(num_classes=100), 'model.safetensors', 'fc.weight (file [10, 512], architecture [100, 512])'),
], ids=['truncated', 'flipped-byte', 'garbled-header', 'string-offsets', 'other-architecture', 'wrong-shape'])
def test_damaged_folder_fails_naming_the_file(folder, tmp_path, damage, file, words):
    bad = copy_folder(folder, tmp_path)
    damage(bad)
    for check in (H.verify_hub_folder, H.load_hub_folder):
        with pytest.raises(IntegrityError) as e:
            check(bad)
        assert e.value.path == str((bad / file).resolve()) or e.value.path == str(bad / file)
        assert words in str(e.value)


def test_pickle_weights_are_refused(folder, tmp_path):
    bad = copy_folder(folder, tmp_path)
    torch.save({'x': torch.zeros(1)}, bad / 'pytorch_model.bin')
    with pytest.raises(IntegrityError, match='pickle'):
        H.verify_hub_folder(bad)


def test_written_weights_carry_a_data_digest(folder):
    _, metadata, _ = H.read_safetensors_header(folder / 'model.safetensors')
    assert len(metadata['timm_asap.data_sha256']) == 64 and metadata['architecture'] == 'resnet18_cifar_asap'
    assert json.loads(metadata['timm_asap.pooling']) == ["ASAP2d(padding='one', mode='centered')"]


@pytest.mark.parametrize('changes, words', [
    (dict(architecture='resnet18_cifar_flc'), "architecture 'resnet18_cifar_asap' (its header records it) but"),
    (dict(pool_mode='reference'), "trained with pooling [\"ASAP2d(padding='one', mode='centered')\"]"),
    (dict(pool_args={'padding': 'large'}), "padding='large'"),
    (dict(pool_position='after'), "placed before the strided convolutions (pool_position='before'"),
], ids=['same-keys-other-architecture', 'other-pool-mode', 'other-pool-args', 'other-placement'])
def test_config_naming_other_pooling_with_the_same_tensors_is_refused(folder, tmp_path, changes, words):
    """resnet18_cifar_flc (or another band mode) has the same tensors as the ASAP weights: the header's
    record of the architecture and pooling catches what the shapes cannot."""
    bad = copy_folder(folder, tmp_path)
    config = json.loads((bad / 'config.json').read_text())
    if 'architecture' not in changes:
        changes = dict(model_args={**config['model_args'], **changes})
    _edit_config(**changes)(bad)
    for check in (H.verify_hub_folder, H.load_hub_folder, lambda f: H.load_model(f'local-dir:{f}')):
        with pytest.raises(IntegrityError) as e:
            check(bad)
        assert e.value.path.endswith('model.safetensors') and words in str(e.value)
        assert 'config.json' in str(e.value)


# ---- unregistered architectures ---------------------------------------------------------------------

def test_unregistered_architecture_says_import_timm_asap(folder, tmp_path):
    bad = copy_folder(folder, tmp_path)
    _edit_config(architecture='resnet19_cifar_asap')(bad)
    with pytest.raises(UnregisteredArchitectureError) as e:
        H.verify_hub_folder(bad)
    msg = str(e.value)
    assert 'import timm_asap' in msg and 'resnet18_cifar_asap' in msg and 'Close matches' in msg
    assert str(bad / 'config.json') in msg


def test_our_transformers_loader_gives_our_error_for_unregistered_asap_architecture(folder, tmp_path):
    from transformers import AutoModelForImageClassification
    bad = copy_folder(folder, tmp_path)
    _edit_config(architecture='resnet19_cifar_asap')(bad)
    for load in (H.load_transformers_model, H.transformers_pipeline):
        with pytest.raises(UnregisteredArchitectureError) as e:
            load(bad)
        assert 'import timm_asap' in str(e.value) and 'upgrade timm' not in str(e.value)
        assert 'resnet18_cifar_asap' in str(e.value) and isinstance(e.value, ImportError)
    # transformers itself is not changed: its own loader keeps its own advice
    with pytest.raises(ImportError, match='upgrade timm'):
        AutoModelForImageClassification.from_pretrained(str(bad))


def test_import_timm_asap_changes_nothing_in_transformers():
    code = ("import sys, timm_asap, timm_asap.hub; assert 'transformers' not in sys.modules; "
            "assert not [f for f in sys.meta_path if type(f).__module__.startswith('timm_asap')]; "
            "from transformers.models.auto.image_processing_auto import get_image_processor_class_from_name as g; "
            "import transformers.models.timm_wrapper.modeling_timm_wrapper as m; "
            "assert m._create_timm_model_with_error_handling.__module__ == m.__name__; "
            "assert g('TimmAsapImageProcessor') is None")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_register_image_processor_makes_transformers_find_it():
    code = ("import timm_asap.hub as h; cls = h.register_image_processor(); "
            "assert h.register_image_processor() is cls; "
            "from transformers.models.auto.image_processing_auto import get_image_processor_class_from_name as g; "
            "assert g('TimmAsapImageProcessor') is cls and cls.__name__ == 'TimmAsapImageProcessor'")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


# ---- the publish command (dry run) ------------------------------------------------------------------

def test_cli_dry_run_writes_the_folder(run_dirs, tmp_path, capsys):
    train, ev = run_dirs
    out = tmp_path / 'hub'
    assert publish_main([HUB_CONFIG, '--checkpoint', str(train), '--eval-dir', str(ev), '--output', str(out),
                         '--dry-run']) == 0
    assert 'dry run' in capsys.readouterr().out
    H.verify_hub_folder(out)
    assert (out / 'README.md').is_file() and (out / 'results.json').is_file()


def test_cli_set_changes_the_trained_runs_config(run_dirs, tmp_path):
    # the checkpoint folder's config.yaml supplies model/data/train; --set reaches those sections too
    train, ev = run_dirs
    names = [f'class {i}' for i in range(10)]
    out = tmp_path / 'hub'
    assert publish_main([HUB_CONFIG, '--checkpoint', str(train), '--eval-dir', str(ev), '--output', str(out),
                         '--dry-run', '--set', f'data.label_names={json.dumps(names)}', '--set', 'hub.license=mit']) == 0
    assert json.loads((out / 'config.json').read_text())['label_names'] == names
    assert 'license: mit' in (out / 'README.md').read_text()
    with pytest.raises(ConfigError, match='unknown key'):
        P.resolve_run_config(HUB_CONFIG, train, ['data.no_such_key=1'])


def test_given_config_names_the_published_tag(run_dirs, tmp_path):
    train, _ = run_dirs
    given = apply_overrides(load_config(HUB_CONFIG), ['model.tag=other_tag'])
    assert P.resolve_run_config(given, train).model.tag == 'other_tag'
    assert P.resolve_run_config(None, train).model.tag == load_config(train / 'config.yaml').model.tag


def test_cli_refuses_without_evaluation(run_dirs, tmp_path, capsys):
    train, _ = run_dirs
    args = [HUB_CONFIG, '--checkpoint', str(train / 'model.safetensors'), '--output', str(tmp_path / 'hub'),
            '--dry-run']
    assert publish_main(args) == 1
    assert '--allow-no-eval' in capsys.readouterr().err and not (tmp_path / 'hub').exists()
    assert publish_main(args + ['--allow-no-eval', '--set', 'hub.license=mit']) == 0
    assert json.loads((tmp_path / 'hub' / 'config.json').read_text())['pretrained_cfg']['license'] == 'mit'


def test_cli_rejects_a_config_of_another_model(run_dirs, tmp_path, capsys):
    train, ev = run_dirs
    assert publish_main(['preactresnet18_asap.fmnist', '--checkpoint', str(train), '--eval-dir', str(ev),
                         '--output', str(tmp_path / 'hub'), '--dry-run']) == 2
    assert 'model.architecture' in capsys.readouterr().err


def test_publish_script_help(monkeypatch, capsys):
    import runpy
    monkeypatch.setattr(sys, 'argv', ['publish.py', '--help'])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / 'scripts' / 'publish.py'), run_name='__main__')
    out = capsys.readouterr().out
    assert e.value.code == 0 and '--allow-no-eval' in out and '--dry-run' in out


# ---- offline cache from a folder --------------------------------------------------------------------

def test_seeded_cache_loads_offline_with_timm_and_transformers(folder, reference, tmp_path, monkeypatch):
    from transformers import AutoModelForImageClassification
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'cache'))
    repo = 'timm-asap/offline-copy'
    snapshot = H.seed_hub_cache(folder, repo)
    assert (tmp_path / 'cache' / 'models--timm-asap--offline-copy' / 'refs' / 'main').read_text() == snapshot.name
    x = images()
    with torch.no_grad():
        ref = reference(x)
        assert torch.equal(timm.create_model(f'hf-hub:{repo}', pretrained=True).eval()(x), ref)
        assert torch.equal(H.load_model(f'hf-hub:{repo}')(x), ref)
        assert torch.equal(AutoModelForImageClassification.from_pretrained(repo).eval()(x).logits, ref)


# ---- a real fine-tuning output folder, end to end ----------------------------------------------------

def test_finetune_output_publishes_and_reloads(tmp_path):
    """The fine-tuning tool's output (shrunk CIFAR ResNet via model_args) -> Hub folder -> timm and
    transformers give the trained model's logits; the model_args travel through config.json."""
    from transformers import AutoModelForImageClassification

    from finetune_helpers import tiny_config, write_fake_fashion_mnist
    from timm_asap_lab.train import finetune

    data = write_fake_fashion_mnist(tmp_path / 'data', n_train=32, n_test=16)
    cfg = tiny_config(data, train={'epochs': 1})
    cfg.hub.repo_id, cfg.hub.datasets = 'timm-asap/tiny', ['zalando-datasets/fashion_mnist']
    out = tmp_path / 'train'
    finetune(cfg, out, device='cpu', progress=False, handle_signals=False)
    folder = P.export_output_dir(out, tmp_path / 'hub', allow_no_eval=True)
    config = json.loads((folder / 'config.json').read_text())
    assert config['model_args']['layers'] == [1, 1, 1, 1] and config['model_args']['channels'] == [8, 16, 32, 64]
    trained = P.load_trained_model(load_config(out / 'config.yaml'), out / 'model.safetensors')
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = trained(x)
        assert torch.equal(H.load_hub_folder(folder)(x), ref)
        assert torch.equal(AutoModelForImageClassification.from_pretrained(str(folder)).eval()(x).logits, ref)


def test_written_files_and_folders_follow_the_umask(run_dirs, tmp_path):
    """Temp files are made 0600 and temp folders 0700; what lands gets an ordinary file's mode."""
    import os
    from timm_asap._files import atomic_write_text
    from timm_asap_lab.train.checkpoint import save_weights
    train, ev = run_dirs
    old = os.umask(0o022)
    try:
        out = P.export_output_dir(train, tmp_path / 'hub', eval_dir=ev)
        weights = save_weights({'w': torch.zeros(2)}, tmp_path / 'w.safetensors')
        text = atomic_write_text(tmp_path / 'r.md', 'x')
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    for p in [*out.iterdir(), weights, text]:
        if p.is_file():
            assert p.stat().st_mode & 0o777 == 0o644, p


def test_training_record_gives_the_card_what_the_run_used(tmp_path):
    from timm_asap_lab.publish.card import training_text
    from timm_asap_lab.publish.export import read_training_record
    assert training_text({'amp': 'bfloat16', 'device': 'cuda:0 (NVIDIA H100)', 'world_size': 4}) == \
        'bfloat16 autocast, on cuda:0 (NVIDIA H100), 4 processes'
    assert training_text({'amp': 'float16', 'device': 'cuda:0', 'world_size': 1}) == \
        'float16 autocast with a gradient scaler, on cuda:0'
    assert training_text(None).startswith('not recorded')
    cfg = load_config(HUB_CONFIG)
    record = tmp_path / 'metrics.json'
    record.write_text(json.dumps({'architecture': 'resnet18_cifar_flc', 'amp': 'off'}))
    with pytest.raises(HubPublishError, match="records a run of 'resnet18_cifar_flc', but the model published is "
                                              "'resnet18_cifar_asap'"):
        read_training_record(record, cfg)
    record.write_text('[1, 2]')
    with pytest.raises(HubPublishError, match='expected a JSON object'):
        read_training_record(record, cfg)
