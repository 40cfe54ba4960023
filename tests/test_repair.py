"""The zero-shot repair (recalibrate_norm), the base-vs-converted comparison (compare_models) and their CLIs
(``timm-asap compare`` / ``timm-asap repair``), on tiny models and data."""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch import nn

from timm_asap import asapify, recalibrate_norm
from timm_asap_lab.evaluation import EvalImages, compare_models

pytestmark = pytest.mark.usefixtures('one_thread')

FMNIST_DIR = Path('/usr/share/datasets/fashion-mnist')
W8 = dict(channels=[8, 16, 32, 64], stem_chs=8, in_chans=1, num_classes=10)
STATS = ('running_mean', 'running_var', 'num_batches_tracked')


def _is_stat(key: str) -> bool:
    return key.rsplit('.', 1)[-1] in STATS


def _w8(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model('preactresnet18', **W8).eval()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _images(n: int = 20, chans: int = 1, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, chans, size, size, generator=torch.Generator().manual_seed(seed))


# ---- recalibrate_norm -------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['preactresnet18', 'resnet18'])
def test_repair_changes_only_batchnorm_running_stats_and_not_the_base(name):
    base = _w8() if name == 'preactresnet18' else timm.create_model('resnet18', num_classes=4).eval()
    chans = 1 if name == 'preactresnet18' else 3
    base_before = _snapshot(base)
    converted = asapify(copy.deepcopy(base), pool='asap')
    before = _snapshot(converted)
    assert recalibrate_norm(converted, _images(12, chans, 32), batch_size=4) is converted  # in place
    after = converted.state_dict()
    assert after.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(_is_stat(k) for k in changed), sorted(k for k in changed if not _is_stat(k))
    assert all(k in changed for k in before if k.endswith(('running_mean', 'running_var')))
    assert all(int(after[k]) == 3 for k in after if k.endswith('num_batches_tracked'))  # 12 images in batches of 4
    for k, v in base.state_dict().items():  # the base model is untouched
        assert torch.equal(v, base_before[k]), k


def test_repair_restores_every_module_mode_and_momentum():
    model = asapify(_w8(), pool='flc')
    model.eval()
    model.stages[1].train()  # a mixed state must come back as it was, module by module
    modes = {n: m.training for n, m in model.named_modules()}
    momenta = {n: m.momentum for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    model.stages[2][0].norm1.momentum = 0.3
    momenta['stages.2.0.norm1'] = 0.3
    recalibrate_norm(model, _images(8), batch_size=4)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: m.momentum for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)} == momenta
    train_model = asapify(_w8(), pool='asap').train()
    recalibrate_norm(train_model, _images(8), batch_size=4)
    assert all(m.training for m in train_model.modules())


def _cumulative_average_oracle(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Each BatchNorm layer's input statistics, batch by batch, averaged with equal weights: what a cumulative
    moving average (momentum None) over the batches gives. Computed in training mode (batch statistics), float64."""
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            def record(module, inputs, name=name):
                x = inputs[0].transpose(0, 1).reshape(inputs[0].shape[1], -1)
                seen.setdefault(name, []).append((x.mean(1), x.var(1, unbiased=True)))
            hooks.append(m.register_forward_pre_hook(record))
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in hooks:
        h.remove()
    return {name: {'running_mean': torch.stack([m for m, _ in stats]).mean(0),
                   'running_var': torch.stack([v for _, v in stats]).mean(0),
                   'num_batches_tracked': torch.tensor(len(stats))} for name, stats in seen.items()}


def test_repair_equals_a_float64_cumulative_average_of_the_batch_statistics():
    model = asapify(_w8(), pool='asap').double()
    x = _images(20, 1, 16).double()
    expected = _cumulative_average_oracle(copy.deepcopy(model), list(x.split(8)))  # batches of 8, 8 and 4
    recalibrate_norm(model, x, batch_size=8)
    state = model.state_dict()
    assert len(expected) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 10
    for name, stats in expected.items():
        for key, value in stats.items():
            torch.testing.assert_close(state[f'{name}.{key}'], value.to(state[f'{name}.{key}'].dtype), rtol=1e-12,
                                       atol=1e-12, msg=f'{name}.{key}')


def test_repair_accepts_a_tensor_a_dataloader_and_a_plain_iterable_alike():
    x = _images(16)
    by_tensor = recalibrate_norm(asapify(_w8(), pool='asap'), x, batch_size=8).state_dict()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(16, dtype=torch.long)),
                                         batch_size=8)
    by_loader = recalibrate_norm(asapify(_w8(), pool='asap'), loader).state_dict()
    by_list = recalibrate_norm(asapify(_w8(), pool='asap'), [(x[:8], 'label'), x[8:]]).state_dict()
    capped = recalibrate_norm(asapify(_w8(), pool='asap'), list(x.split(8)) + [x[:8]], num_images=16).state_dict()
    for k, v in by_tensor.items():
        assert torch.equal(v, by_loader[k]) and torch.equal(v, by_list[k]) and torch.equal(v, capped[k]), k


def test_repair_caps_the_images_used():
    x = _images(16)
    capped = recalibrate_norm(asapify(_w8(), pool='asap'), x, num_images=6, batch_size=4).state_dict()
    first = recalibrate_norm(asapify(_w8(), pool='asap'), x[:6], batch_size=4).state_dict()
    assert all(torch.equal(v, first[k]) for k, v in capped.items())
    assert int(capped['stages.0.0.norm1.num_batches_tracked']) == 2  # 4 + 2 images


def _png_folder(root: Path, n: int, classes: int = 2, size: int = 36) -> Path:
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f'class{i % classes}'
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f'{i}.png')
    return root


def test_repair_reads_an_image_folder_with_the_models_own_transform(tmp_path):
    from PIL import Image
    from timm.data import create_transform, resolve_data_config
    folder = _png_folder(tmp_path / 'images', 6)
    torch.manual_seed(0)
    model = asapify(timm.create_model('resnet18_cifar', num_classes=3), pool='asap').eval()
    reference = copy.deepcopy(model)
    recalibrate_norm(model, folder, batch_size=4)
    # independently: the files in timm's order, through timm's eval transform from the model's pretrained_cfg
    transform = create_transform(**resolve_data_config(model=reference), is_training=False)
    files = sorted(folder.rglob('*.png'), key=lambda p: (p.parent.name, int(p.stem)))
    x = torch.stack([transform(Image.open(p).convert('RGB')) for p in files])
    assert x.shape == (6, 3, 32, 32)
    recalibrate_norm(reference, x, batch_size=4)
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, msg=k)
    capped = recalibrate_norm(copy.deepcopy(model), folder, num_images=3, batch_size=4)
    assert int(capped.bn1.num_batches_tracked) == 1 and not torch.equal(capped.bn1.running_mean, model.bn1.running_mean)


def test_repair_handles_timm_batchnormact_and_syncbatchnorm():
    from timm.layers import BatchNormAct2d, convert_sync_batchnorm
    model = asapify(_w8(), pool='asap')
    assert any(isinstance(m, BatchNormAct2d) for m in model.modules())
    sync = convert_sync_batchnorm(copy.deepcopy(model))  # timm's: BatchNormAct2d -> SyncBatchNormAct
    assert any(isinstance(m, nn.SyncBatchNorm) for m in sync.modules())
    x = _images(8)
    before = _snapshot(sync)
    recalibrate_norm(model, x, batch_size=4)
    recalibrate_norm(sync, x, batch_size=4)  # on the CPU, without a process group: plain batch statistics
    for k, v in model.state_dict().items():
        torch.testing.assert_close(sync.state_dict()[k], v, msg=k)
        if k.endswith('running_mean'):
            assert not torch.equal(before[k], v), k


def test_a_model_without_batchnorm_warns_and_is_returned_unchanged():
    torch.manual_seed(0)
    model = timm.create_model('convnext_atto', num_classes=3).eval()
    before = _snapshot(model)
    with pytest.warns(UserWarning, match=r'no BatchNorm running statistics.*LayerNorm2d.*returned unchanged'):
        assert recalibrate_norm(model, []) is model  # data is not even read
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training


@pytest.mark.parametrize('data, kwargs, error, words', [
    (torch.empty(0, 1, 16, 16), {}, ValueError, 'no images'),
    ([], {}, ValueError, 'no images'),
    (torch.randn(4, 3, 16, 16), {}, ValueError, 'has 3 channels (shape (4, 3, 16, 16)); the model\'s first '
                                                'convolution (stem) takes 1'),
    (torch.randn(1, 16, 16), {}, ValueError, 'one image needs a batch dimension'),
    (torch.zeros(4, 1, 16, 16, dtype=torch.uint8), {}, ValueError, 'is torch.uint8; expected float images'),
    (torch.full((2, 1, 16, 16), float('nan')), {}, ValueError, 'non-finite'),
    (42, {}, TypeError, 'got int'),
    ([{'image': torch.randn(2, 1, 16, 16)}], {}, TypeError, 'batch 0 is a dict'),
    (torch.randn(4, 1, 16, 16), {'num_images': 0}, ValueError, 'num_images must be a positive integer or None'),
    (torch.randn(4, 1, 16, 16), {'batch_size': 0}, ValueError, 'batch_size must be a positive integer, got 0'),
])
def test_bad_images_are_clear_errors_and_change_nothing(data, kwargs, error, words):
    model = asapify(_w8(), pool='asap')
    before = _snapshot(model)
    with pytest.raises(error) as e:
        recalibrate_norm(model, data, **kwargs)
    assert words in str(e.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_bad_batch_midway_puts_the_old_statistics_back(tmp_path):
    model = asapify(_w8(), pool='asap')
    model.eval()
    before = _snapshot(model)
    with pytest.raises(ValueError, match='batch 1 has 3 channels'):
        recalibrate_norm(model, [_images(4), _images(4, chans=3)])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(m.training for m in model.modules())
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_image_folder_errors(tmp_path):
    model = asapify(timm.create_model('resnet18_cifar', num_classes=3), pool='asap')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='no images in'):
        recalibrate_norm(model, tmp_path / 'empty')
    with pytest.raises(FileNotFoundError, match='does not exist'):
        recalibrate_norm(model, tmp_path / 'missing')
    folder = _png_folder(tmp_path / 'images', 2)
    with pytest.raises(ValueError, match='takes 1-channel images but its pretrained_cfg describes 3-channel'):
        recalibrate_norm(_w8(), folder)


# ---- compare_models ---------------------------------------------------------------------------------------

def test_compare_a_model_with_itself_and_with_its_conversion():
    model = _w8()
    images = torch.randint(0, 256, (24, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(24) % 10
    same = compare_models(model, model, images, labels, batch_size=10)
    assert same['agreement'] == 100.0 and same['agree'] == 24 and same['agreement_se'] == 0.0
    assert same['base_top1'] == same['converted_top1'] and same['base_correct'] == same['converted_correct']
    assert same['count'] == 24
    converted = asapify(copy.deepcopy(model), pool='asap')
    result = compare_models(model, converted, EvalImages(images, labels), batch_size=10, amp='none')
    with torch.no_grad():  # the counts, independently: the 1-channel model takes the mean of its RGB statistics
        mean, std = (sum(model.pretrained_cfg[k]) / 3 for k in ('mean', 'std'))
        x = (images.float() / 255 - mean) / std
        base_pred, conv_pred = model(x).argmax(1), converted(x).argmax(1)
    assert result['base_correct'] == int((base_pred == labels).sum())
    assert result['converted_correct'] == int((conv_pred == labels).sum())
    assert result['agree'] == int((base_pred == conv_pred).sum()) < 24
    assert result['agreement'] == pytest.approx(100 * result['agree'] / 24)
    share = result['agree'] / 24
    assert result['agreement_se'] == pytest.approx(100 * (share * (1 - share) / 24) ** 0.5)


def test_compare_rejects_bad_images():
    model = _w8()
    with pytest.raises(ValueError, match=r'float images must be in \[0, 1\]'):
        compare_models(model, model, torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match='give the labels'):
        compare_models(model, model, torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match='one label per image'):
        compare_models(model, model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match='predicts 10 classes, the converted one 3'):
        compare_models(model, timm.create_model('preactresnet18', **{**W8, 'num_classes': 3}), torch.rand(2, 1, 8, 8),
                       torch.tensor([0, 1]))


# ---- the CLIs ---------------------------------------------------------------------------------------------

needs_fmnist = pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason=f'Fashion-MNIST not in {FMNIST_DIR}')


@pytest.fixture(scope='module')
def base_run(tmp_path_factory):
    """A fine-tuning run folder of a tiny base model: model.safetensors (with its header) and config.yaml."""
    from timm_asap_lab.config import config_from_dict, save_config
    from timm_asap.hub.integrity import save_safetensors, weights_metadata
    folder = tmp_path_factory.mktemp('base_run')
    model = _w8(3)
    with torch.no_grad():  # running statistics unlike the defaults, so the repair visibly changes them
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    save_safetensors(model.state_dict(), folder / 'model.safetensors', weights_metadata(model, 'preactresnet18'))
    save_config(config_from_dict({
        'model': {'architecture': 'preactresnet18', 'pool': 'none', 'num_classes': 10, 'in_chans': 1, 'img_size': 32,
                  'model_args': {'channels': [8, 16, 32, 64], 'stem_chs': 8}},
        'data': {'dataset': 'fashion_mnist', 'mean': [0.286], 'std': [0.353]}}), folder / 'config.yaml')
    return folder


def _cli(module, argv, capsys):
    status = module.main([str(a) for a in argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def _one_line_error(err: str, prog: str, words: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.startswith(f'{prog}: error:')]
    assert len(lines) == 1 and words in lines[0], err
    assert 'Traceback' not in err


@needs_fmnist
def test_compare_and_repair_clis_agree_on_the_repaired_model(base_run, tmp_path, capsys):
    from safetensors.torch import load_file

    from timm_asap_lab.cli import compare, repair
    from timm_asap.hub.integrity import ARCHITECTURE_KEY, POOLING_KEY, read_safetensors_header
    ckpt = base_run / 'model.safetensors'
    report = tmp_path / 'compare.json'
    common = ['--count', 24, '--batch-size', 8, '--seed', 1]
    status, out, _ = _cli(compare, ['--model', f'preactresnet18@{ckpt}', '--pool', 'flc', *common,
                                    '--repair-images', 16, '--repair-batch-size', 8, '--json', report], capsys)
    assert status == 0
    assert '| base (preactresnet18) |' in out and '| preactresnet18_flc, zero-shot |' in out
    assert 'preactresnet18_flc, BatchNorm re-estimated on 16 images of fashion_mnist:train' in out
    payload = json.loads(report.read_text())
    assert payload['written_by'] == 'timm-asap compare' and payload['images']['count'] == 24
    assert payload['model_args'] == {'channels': [8, 16, 32, 64], 'stem_chs': 8, 'num_classes': 10, 'in_chans': 1}
    base_row, zero_row, repaired_row = payload['rows']
    assert 'agreement' not in base_row and zero_row['count'] == 24 == repaired_row['count']
    assert repaired_row['agreement'] != zero_row['agreement'] or repaired_row['top1'] != zero_row['top1']

    out_file = tmp_path / 'w8_flc.safetensors'
    status, out, _ = _cli(repair, ['--model', f'preactresnet18@{ckpt}', '--pool', 'flc', '--count', 16, '--batch-size',
                                   8, '--seed', 1, '--output', out_file], capsys)
    assert status == 0 and f'load it as preactresnet18_flc@{out_file}' in out
    meta = read_safetensors_header(out_file)[1]
    assert meta[ARCHITECTURE_KEY] == 'preactresnet18_flc' and json.loads(meta[POOLING_KEY])
    record = json.loads(meta['timm_asap.repair'])
    assert record['images'] == 16 and record['mean'] == [0.286] and record['source'] == 'fashion_mnist:train'
    repaired, base = load_file(out_file), load_file(ckpt)
    assert repaired.keys() == base.keys()
    for k, v in base.items():  # the weights are the base's; only the BatchNorm statistics moved
        assert torch.equal(repaired[k], v) == (not _is_stat(k)), k
    # the saved model is the one compare measured: same images, same batches, same statistics
    status, out, _ = _cli(compare, ['--model', f'preactresnet18@{ckpt}', '--converted',
                                    f'preactresnet18_flc@{out_file}', *common, '--json', report], capsys)
    assert status == 0
    rows = json.loads(report.read_text())['rows']
    assert (rows[1]['correct'], rows[1]['agree']) == (repaired_row['correct'], repaired_row['agree'])
    # and it loads with timm as a checkpoint of the registered variant
    model = timm.create_model('preactresnet18_flc', pretrained=True, pretrained_cfg_overlay=dict(file=str(out_file)),
                              **W8)
    assert torch.equal(model.stages[1][0].norm1.running_mean, repaired['stages.1.0.norm1.running_mean'])
    # running it again replaces its own file
    assert _cli(repair, ['--model', f'preactresnet18@{ckpt}', '--pool', 'flc', '--count', 16, '--output', out_file],
                capsys)[0] == 0


def test_repair_cli_reads_an_image_folder(base_run, tmp_path, capsys):
    from timm_asap_lab.cli import repair
    folder = _png_folder(tmp_path / 'images', 5, size=40)
    out_file = tmp_path / 'from_folder.safetensors'
    status, out, _ = _cli(repair, ['--model', f"preactresnet18@{base_run / 'model.safetensors'}", '--pool', 'asap',
                                   '--images', folder, '--count', 'all', '--batch-size', 4, '--output', out_file],
                          capsys)
    assert status == 0 and 'on 5 images' in out and out_file.is_file()


@pytest.mark.parametrize('argv, words', [
    (['--pool', 'asap', '--output', '{run}/model.safetensors'], 'never overwrites its input'),
    (['--pool', 'asap', '--output', '{tmp}/foreign.safetensors'], 'exists and was not written by timm-asap repair'),
    (['--pool', 'asap', '--output', '{tmp}/weights.pth'], 'give a .safetensors path'),
    (['--output', '{tmp}/new.safetensors'], 'has no spectral pooling: give a converted model'),
    (['--pool-args', '{padding: large}', '--output', '{tmp}/new.safetensors'], '--pool-args apply with --pool'),
])
def test_repair_cli_refuses_bad_outputs_and_models(base_run, tmp_path, capsys, argv, words):
    from timm_asap_lab.cli import repair
    foreign = tmp_path / 'foreign.safetensors'
    foreign.write_bytes(b'not ours')
    before = (base_run / 'model.safetensors').read_bytes()
    argv = [a.replace('{run}', str(base_run)).replace('{tmp}', str(tmp_path)) for a in argv]
    status, _, err = _cli(repair, ['--model', f"preactresnet18@{base_run / 'model.safetensors'}", '--count', 4,
                                   *argv], capsys)
    assert status == 2
    _one_line_error(err, 'timm-asap repair', words)
    assert foreign.read_bytes() == b'not ours' and (base_run / 'model.safetensors').read_bytes() == before
    assert not (tmp_path / 'new.safetensors').exists()


@pytest.mark.parametrize('argv, words', [
    (['--model', 'preactresnet18@{tmp}/missing.safetensors'], 'missing.safetensors not found'),
    (['--model', 'resnet18_cifar'], 'resnet18_cifar: no pretrained weights for this tag'),
    (['--model', 'preactresnet18@{run}/model.safetensors', '--json', '{tmp}/foreign.json'],
     'exists and was not written by timm-asap compare'),
    (['--model', 'preactresnet18@{run}/model.safetensors', '--converted', 'preactresnet18@{run}/model.safetensors'],
     'has no spectral pooling'),
    (['--model', 'preactresnet18@{run}/model.safetensors', '--pool-args', '{padding: huge}'], 'padding'),
    (['--model', 'preactresnet18@{run}/model.safetensors', '--model-args', '[1, 2]'], 'expected a mapping'),
])
def test_compare_cli_bad_input_is_one_line(base_run, tmp_path, capsys, argv, words):
    from timm_asap_lab.cli import compare
    (tmp_path / 'foreign.json').write_text('{"mine": true}')
    argv = [a.replace('{run}', str(base_run)).replace('{tmp}', str(tmp_path)) for a in argv]
    status, out, err = _cli(compare, [*argv, '--count', 4], capsys)
    assert status == 2
    _one_line_error(err, 'timm-asap compare', words)
    assert (tmp_path / 'foreign.json').read_text() == '{"mine": true}'


def test_repair_cli_refuses_a_model_without_batchnorm(tmp_path, capsys):
    from safetensors.torch import save_file

    from timm_asap_lab.cli import repair
    ckpt = tmp_path / 'convnext.safetensors'
    save_file(timm.create_model('convnext_atto_asap', num_classes=3).state_dict(), ckpt)
    status, _, err = _cli(repair, ['--model', f'convnext_atto_asap@{ckpt}', '--model-args', '{num_classes: 3}',
                                   '--images', tmp_path, '--output', tmp_path / 'out.safetensors'], capsys)
    assert status == 2
    _one_line_error(err, 'timm-asap repair', 'convnext_atto_asap has no BatchNorm running statistics to re-estimate')
    assert not (tmp_path / 'out.safetensors').exists()


def test_the_commands_are_listed(capsys):
    from timm_asap_lab.cli.main import main
    assert main([]) == 0
    usage = capsys.readouterr().out
    assert '  compare ' in usage and '  repair ' in usage
