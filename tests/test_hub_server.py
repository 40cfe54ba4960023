"""Publishing to and loading from an in-process Hub with the real huggingface_hub client, timm and
transformers: publish, list, download, create by name, transformers pipeline, offline cache,
re-publishing, private repositories, bad tokens, corrupted and broken downloads."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import RepositoryNotFoundError
from PIL import Image

import timm_asap.models  # noqa: F401  (registers the architectures)
from timm_asap import hub as H
from timm_asap_lab import publish as P
from timm_asap_lab.cli.publish import main as publish_main
from timm_asap_lab.config import load_config
from timm_asap.hub import HubDownloadError, IntegrityError
from timm_asap_lab.publish.errors import HubAuthError, HubPublishError

from conftest_hub import (GOOD_TOKEN, HUB_CONFIG, ORG, OTHER_TOKEN, SMALL_ARGS, hub, hub_env,  # noqa: F401
                          make_eval_dir, make_train_dir)

pytestmark = pytest.mark.filterwarnings('ignore:Use .content=<...>. to upload raw bytes:DeprecationWarning')

ASAP = 'resnet18_cifar_asap.fmnist'
BASELINE = 'resnet18_cifar.fmnist'
REGISTRY_REPO = 'timm-asap/resnet18_cifar_asap.fmnist'  # hub.repo_id of the shipped config = registry hf_hub_id


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A trained-model folder, its evaluation, the Hub folder built from them, and the reference model."""
    root = tmp_path_factory.mktemp('run')
    train = make_train_dir(root / 'train', small=True)
    ev = make_eval_dir(root / 'eval', {ASAP: 91.25, BASELINE: 90.5})
    folder = P.export_output_dir(train, root / 'hub', eval_dir=ev)
    model = P.load_trained_model(load_config(train / 'config.yaml'), train / 'model.safetensors')
    return dataclasses.make_dataclass('Run', ['root', 'train', 'eval', 'folder', 'model'])(
        root, train, ev, folder, model)


def images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(7))


def grey_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), 'L')


def logits(model, x=None):
    with torch.no_grad():
        out = model(images() if x is None else x)
    return getattr(out, 'logits', out)


def _register_again(arch: str) -> None:
    """Register ``arch`` again, its pretrained cfgs rebuilt from the (changed) weight-tag table."""
    import sys
    import warnings
    from timm.models import generate_default_cfgs, model_entrypoint, register_model
    fn = model_entrypoint(arch)
    module = sys.modules[fn.__module__]
    module.default_cfgs.update(generate_default_cfgs(module.variant_pretrained_cfgs(arch)))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # timm warns about overwriting the registration
        register_model(fn)


def publish_small_tag(request) -> None:
    """Mark the registry's tag published (the shipped table has it unpublished) with the small test model's
    args, as a release that publishes it would; undone after the test."""
    from timm_asap.models import weight_tags
    old = weight_tags.WEIGHT_TAGS
    weight_tags.WEIGHT_TAGS = tuple(
        dataclasses.replace(t, published=True, model_args={**t.model_args, **SMALL_ARGS}) if t.name == ASAP else t
        for t in old)
    _register_again(ASAP.split('.')[0])

    def undo():
        weight_tags.WEIGHT_TAGS = old
        _register_again(ASAP.split('.')[0])
    request.addfinalizer(undo)


def publish(env, folder: Path, repo_id: str, **kwargs):
    return P.upload_hub_folder(folder, repo_id, **kwargs)


def snapshot_files(env, repo_id: str) -> list[Path]:
    base = env.cache_dir / f"models--{repo_id.replace('/', '--')}"
    return sorted(base.rglob('*')) if base.exists() else []


# ---- publish, list, download -------------------------------------------------------------------------

def test_publish_list_and_download(hub_env, run):
    repo = f'{ORG}/publish-list'
    result = publish(hub_env, run.folder, repo)
    local = {p.relative_to(run.folder).as_posix(): p.read_bytes() for p in run.folder.rglob('*') if p.is_file()}
    remote = hub_env.server.files(repo)
    assert {k: v for k, v in remote.items() if k != '.gitattributes'} == local
    assert result.files == sorted(local) and result.commit_sha == hub_env.server.repos[repo].refs['main']
    assert hub_env.server.repos[repo].private is False
    api = HfApi()
    assert set(api.list_repo_files(repo)) == set(local) | {'.gitattributes'}
    listed = [m.id for m in api.list_models(author=ORG)]
    assert repo in listed
    assert api.model_info(repo).library_name == 'timm'
    readme = hf_hub_download(repo, 'README.md')
    assert Path(readme).read_bytes() == local['README.md']
    assert not any(n.endswith(('.bin', '.pth', '.pt')) for n in remote)


def test_create_by_name_through_hf_hub_and_the_registry(hub_env, run, request):
    publish(hub_env, run.folder, REGISTRY_REPO)
    ref = logits(run.model)
    # hf-hub: name, plain timm and our checked loader
    assert torch.equal(logits(timm.create_model(f'hf-hub:{REGISTRY_REPO}', pretrained=True).eval()), ref)
    assert torch.equal(logits(H.load_model(f'hf-hub:{REGISTRY_REPO}')), ref)
    # the registry's <architecture>.<tag>: unpublished, timm does not advertise it; once published its
    # pretrained cfg points at hub.repo_id of the shipped recipe
    assert not timm.is_model_pretrained(ASAP) and timm.models.get_pretrained_cfg(ASAP).hf_hub_id is None
    publish_small_tag(request)
    assert timm.is_model_pretrained(ASAP) and ASAP in timm.list_pretrained('resnet18_cifar_asap*')
    assert timm.models.get_pretrained_cfg(ASAP).hf_hub_id == load_config(HUB_CONFIG).hub.repo_id == REGISTRY_REPO
    assert torch.equal(logits(timm.create_model(ASAP, pretrained=True).eval()), ref)
    assert torch.equal(logits(H.load_model(ASAP)), ref)


# ---- transformers -------------------------------------------------------------------------------------

def test_transformers_auto_model_and_pipeline(hub_env, run):
    from transformers import AutoModelForImageClassification, pipeline
    repo = f'{ORG}/transformers'
    publish(hub_env, run.folder, repo)
    model = AutoModelForImageClassification.from_pretrained(repo).eval()
    assert torch.equal(logits(model), logits(run.model))
    assert model.config.id2label[0] == 'T-shirt/top'
    # the pipeline (RGB images in; the config's grey-aware processor converts them back) against timm;
    # transformers' own pipeline finds that processor once it is registered (our loaders do it, or this call)
    H.register_image_processor()
    img = grey_image()
    classify = pipeline('image-classification', model=repo)
    out = classify(img, top_k=10)
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=run.model), is_training=False)
    probs = logits(run.model, transform(img).unsqueeze(0)).softmax(-1)[0]
    names = model.config.id2label
    expected = {names[i]: probs[i].item() for i in range(10)}
    assert {o['label'] for o in out} == set(expected)
    for o in out:
        assert o['score'] == pytest.approx(expected[o['label']], abs=1e-6)
    assert torch.equal(logits(H.load_transformers_model(repo)), logits(run.model))


# ---- offline ------------------------------------------------------------------------------------------

def test_offline_use_with_a_filled_cache(hub_env, run, request):
    from transformers import AutoModelForImageClassification, pipeline
    publish(hub_env, run.folder, REGISTRY_REPO)
    publish_small_tag(request)
    ref = logits(run.model)
    H.load_model(f'hf-hub:{REGISTRY_REPO}')  # fills the cache
    H.transformers_pipeline(REGISTRY_REPO)
    hub_env.set_offline()
    before = len(hub_env.server.requests)
    assert torch.equal(logits(timm.create_model(f'hf-hub:{REGISTRY_REPO}', pretrained=True).eval()), ref)
    assert torch.equal(logits(timm.create_model(ASAP, pretrained=True).eval()), ref)
    assert torch.equal(logits(H.load_model(f'hf-hub:{REGISTRY_REPO}')), ref)
    assert torch.equal(logits(AutoModelForImageClassification.from_pretrained(REGISTRY_REPO).eval()), ref)
    assert len(pipeline('image-classification', model=REGISTRY_REPO)(grey_image(), top_k=3)) == 3
    assert len(hub_env.server.requests) == before  # nothing reached the server


# ---- re-publishing --------------------------------------------------------------------------------------

def test_republishing_updates_the_card_and_drops_stale_files(hub_env, run):
    repo = f'{ORG}/republish'
    publish(hub_env, run.folder, repo)
    commits = hub_env.server.commit_count(repo)
    ev2 = make_eval_dir(run.root / 'eval2', {ASAP: 93.5}, plots=False)
    folder2 = P.export_output_dir(run.train, run.root / 'hub2', eval_dir=ev2)
    publish(hub_env, folder2, repo, commit_message='New evaluation')
    files = hub_env.server.files(repo)
    assert files['README.md'] == (folder2 / 'README.md').read_bytes()
    assert b'93.5' in files['README.md'] and b'91.25' not in files['README.md']
    assert 'plots/shift_consistency.png' not in files and 'plots/shift_consistency.png' in hub_env.server.files(
        repo, hub_env.server.repos[repo].commits[hub_env.server.repos[repo].refs['main']].parent)
    assert hub_env.server.commit_count(repo) == commits + 1
    readme = Path(hf_hub_download(repo, 'README.md')).read_text()
    assert 'value: 93.5' in readme


# ---- tokens -----------------------------------------------------------------------------------------

def test_rejected_token_is_a_clear_error_and_never_shown(hub_env, run, caplog, capsys):
    bad = 'hf_rejected_secret_token_31415'
    hub_env.set_token(bad)
    caplog.set_level(logging.DEBUG)
    repo = f'{ORG}/bad-token'
    with pytest.raises(HubAuthError, match='rejected the token from the HF_TOKEN environment variable') as e:
        publish(hub_env, run.folder, repo)
    assert bad not in str(e.value) and e.value.__cause__ is None
    assert publish_main([HUB_CONFIG, '--checkpoint', str(run.train), '--eval-dir', str(run.eval),
                         '--output', str(run.root / 'cli-bad'), '--repo-id', repo]) == 1
    out = capsys.readouterr()
    assert 'rejected the token' in out.err
    assert bad not in out.out + out.err + caplog.text
    assert repo not in hub_env.server.repos
    for p in (run.root / 'cli-bad').rglob('*'):
        assert not p.is_file() or bad.encode() not in p.read_bytes()


def test_missing_token_is_a_clear_error(hub_env, run):
    hub_env.set_token(None)
    before = len(hub_env.server.requests)
    with pytest.raises(HubAuthError, match='no Hugging Face token: set HF_TOKEN'):
        publish(hub_env, run.folder, f'{ORG}/no-token')
    assert len(hub_env.server.requests) == before  # refused before talking to the Hub


def test_token_is_not_written_anywhere(hub_env, run, caplog):
    caplog.set_level(logging.DEBUG)
    repo = f'{ORG}/token-files'
    publish(hub_env, run.folder, repo)
    H.load_model(f'hf-hub:{repo}')
    token = GOOD_TOKEN.encode()
    for root in (run.folder, hub_env.cache_dir):
        for p in root.rglob('*'):
            assert not p.is_file() or token not in p.read_bytes(), p
    assert GOOD_TOKEN not in caplog.text
    assert any(auth == f'Bearer {GOOD_TOKEN}' for _, _, auth in hub_env.server.requests)  # it was used


# ---- private ------------------------------------------------------------------------------------------

def test_private_repository(hub_env, run):
    repo = f'{ORG}/private'
    publish(hub_env, run.folder, repo, private=True)
    assert hub_env.server.repos[repo].private
    assert repo not in [m.id for m in HfApi(token=OTHER_TOKEN).list_models(author=ORG)]
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo, 'config.json', token=OTHER_TOKEN, cache_dir=hub_env.cache_dir / 'other')
    assert torch.equal(logits(H.load_model(f'hf-hub:{repo}')), logits(run.model))  # the owner's token works
    public = f'{ORG}/public'
    publish(hub_env, run.folder, public)
    with pytest.raises(HubPublishError, match='exists and is public'):
        publish(hub_env, run.folder, public, private=True)


# ---- damaged downloads --------------------------------------------------------------------------------

def _flip(data: bytes) -> bytes:
    b = bytearray(data)
    b[-5000] ^= 0x10
    return bytes(b)


@pytest.mark.parametrize('damage, words', [(_flip, 'corrupted'), (lambda b: b[:-4096], 'truncated')],
                         ids=['flipped-byte', 'truncated'])
def test_damaged_weights_fail_and_leave_nothing_in_the_cache(hub_env, run, damage, words):
    repo = f'{ORG}/damaged'
    if repo not in hub_env.server.repos:
        publish(hub_env, run.folder, repo)
    hub_env.server.tamper(repo, 'model.safetensors', damage)
    try:
        with pytest.raises(IntegrityError, match=words) as e:
            H.load_model(f'hf-hub:{repo}')
        assert e.value.path.endswith('model.safetensors') and 'removed from the cache' in str(e.value)
        original = (run.folder / 'model.safetensors').read_bytes()
        sizes = {len(original), len(damage(original))}
        weights = [p for p in snapshot_files(hub_env, repo) if p.name == 'model.safetensors' or
                   (p.parent.name == 'blobs' and p.stat().st_size in sizes)]
        assert weights == [] and any(p.parent.name == 'blobs' for p in snapshot_files(hub_env, repo))
        with pytest.raises(IntegrityError):
            H.load_transformers_model(repo)
    finally:
        hub_env.server.tamper(repo, 'model.safetensors', None)
    assert torch.equal(logits(H.load_model(f'hf-hub:{repo}')), logits(run.model))  # a clean retry downloads again


def test_broken_transfer_leaves_no_partial_file(hub_env, run):
    repo = f'{ORG}/cut'
    publish(hub_env, run.folder, repo)
    hub_env.server.cut_transfer(repo, 'model.safetensors', 4096)
    try:
        with pytest.raises(HubDownloadError, match='model.safetensors'):
            H.load_model(f'hf-hub:{repo}')
        assert not [p for p in snapshot_files(hub_env, repo) if p.name.endswith('.incomplete')]
    finally:
        hub_env.server.cut_transfer(repo, 'model.safetensors', None)


def test_wrong_config_on_the_hub_is_caught_before_building(hub_env, run, tmp_path):
    import shutil
    repo = f'{ORG}/wrong-config'
    bad = Path(shutil.copytree(run.folder, tmp_path / 'bad'))
    cfg = json.loads((bad / 'config.json').read_text())
    cfg['num_classes'] = 7
    (bad / 'config.json').write_text(json.dumps(cfg))
    api = HfApi()
    api.create_repo(repo, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(bad))  # bypasses our checks, as a hand-made upload would
    with pytest.raises(IntegrityError, match='fc.weight') as e:
        H.load_model(f'hf-hub:{repo}')
    assert e.value.path.endswith('model.safetensors')


# ---- the command, end to end ---------------------------------------------------------------------------

def test_cli_publishes(hub_env, run, capsys):
    repo = f'{ORG}/cli'
    assert publish_main([HUB_CONFIG, '--checkpoint', str(run.train), '--eval-dir', str(run.eval),
                         '--output', str(run.root / 'cli-hub'), '--repo-id', repo, '--private']) == 0
    out = capsys.readouterr().out
    assert f'uploaded to {hub_env.endpoint}/{repo}' in out
    assert hub_env.server.repos[repo].private
    assert hub_env.server.files(repo)['README.md'] == (run.root / 'cli-hub' / 'README.md').read_bytes()
