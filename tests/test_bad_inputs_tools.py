"""Bad inputs of the tools around the models: the model card, the GPU check script and the benchmarks.

Each case gives a correct result or a clear error: every code block of a generated model card runs as
written against the published folder, the card states what the run used, the GPU check refuses an
interpreter it cannot use, and a benchmark ratio measured on noise is called unreliable.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

import timm_asap.models  # noqa: F401  (registers the architectures)
from timm_asap import hub as H
from timm_asap_lab import publish as P
from timm_asap_lab.config import config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r'^```(\w*)\n(.*?)^```\n', re.S | re.M)
TINY_CHANNELS = [8, 16, 32, 64]
GREY_REPO = 'timm-asap/preactresnet18_asap.tiny-grey'
RGB_REPO = 'timm-asap/preactresnet18.tiny-rgb'
RGB_LABELS = ['cat', 'dog', 'bird']


# ---- 9: the model card ------------------------------------------------------------------------------

pytestmark = pytest.mark.usefixtures('no_network')  # nothing here may reach a Hub


@pytest.fixture(scope='module')
def grey_folder(tmp_path_factory):
    """A one-channel ASAP model fine-tuned on the CPU (its recipe asks for bfloat16 autocast, which applies on
    CUDA only: the run used float32), published with evaluation results of 64 images while its training
    watched a validation subset of 8; its recipe's tags include 'baseline', as a recipe shared with the
    baseline does."""
    from conftest_hub import make_eval_dir
    from finetune_helpers import tiny_config, write_fake_fashion_mnist
    from timm_asap_lab.train import finetune

    root = tmp_path_factory.mktemp('grey')
    data = write_fake_fashion_mnist(root / 'data', n_train=32, n_test=16)
    cfg = tiny_config(data, model={'architecture': 'preactresnet18_asap', 'tag': 'tiny-grey',
                                   'model_args': {'channels': TINY_CHANNELS}},
                      data={'val_subset': 8}, train={'epochs': 1, 'amp_dtype': 'bfloat16'})
    cfg.hub.repo_id, cfg.hub.datasets, cfg.hub.license = GREY_REPO, ['zalando-datasets/fashion_mnist'], 'apache-2.0'
    cfg.hub.tags = ['image-classification', 'timm', 'baseline', 'fashion-mnist']
    finetune(cfg, root / 'train', device='cpu', progress=False, handle_signals=False)
    evaluation = make_eval_dir(root / 'eval', {cfg.name: 50.0}, plots=False)
    return P.export_output_dir(root / 'train', root / 'hub', eval_dir=evaluation)


@pytest.fixture(scope='module')
def rgb_folder(tmp_path_factory):
    """A three-channel baseline with three classes (fewer than the five a top-5 needs), built in memory and
    published without evaluation; its recipe's tags wrongly include 'asap'."""
    from timm_asap_lab.publish.export import create_model_from_config

    cfg = config_from_dict({
        'model': {'architecture': 'preactresnet18', 'tag': 'tiny-rgb', 'pool': 'none', 'num_classes': 3,
                  'in_chans': 3, 'img_size': 16, 'model_args': {'channels': TINY_CHANNELS}},
        'data': {'dataset': 'folder', 'label_names': RGB_LABELS, 'val_split': 'validation',
                 'mean': [0.5, 0.5, 0.5], 'std': [0.25, 0.25, 0.25]},
        'hub': {'repo_id': RGB_REPO, 'license': 'mit', 'datasets': ['example/pets'], 'tags': ['asap', 'pets']},
    })
    model = create_model_from_config(cfg).eval()
    return P.build_hub_folder(model, cfg, tmp_path_factory.mktemp('rgb') / 'hub', allow_no_eval=True)


def _card(folder: Path) -> ModelCard:
    return ModelCard.load(folder / 'README.md')


def _recipe_row(folder: Path, setting: str) -> str:
    text = _card(folder).text
    return re.search(rf'^\| {re.escape(setting)} \| (.*) \|$', text, re.M).group(1)


def _run_card_blocks(folder: Path, repo_id: str, grey: bool, tmp_path: Path) -> list[tuple[str, str]]:
    """Every ```python block of the folder's README.md, run verbatim, each in a fresh interpreter, in a
    folder holding an ``image.png``, with the repository id resolvable from an offline Hub cache."""
    from PIL import Image

    cache = tmp_path / 'hf_cache'
    H.seed_hub_cache(folder, repo_id, cache)
    work = tmp_path / 'work'
    work.mkdir()
    Image.new('L' if grey else 'RGB', (20, 20), color=90 if grey else (90, 30, 200)).save(work / 'image.png')
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_HUB_CACHE': str(cache), 'HF_HOME': str(tmp_path / 'hf_home'),
           'HF_ENDPOINT': 'http://127.0.0.1:9', 'HF_HUB_DISABLE_TELEMETRY': '1', 'OMP_NUM_THREADS': '1',
           'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep)}
    blocks = [m.group(2) for m in FENCE.finditer((folder / 'README.md').read_text()) if m.group(1) == 'python']
    assert len(blocks) >= 3, 'the card shows timm, transformers and the checked loaders'
    outputs = []
    for code in blocks:
        proc = subprocess.run([sys.executable, '-c', code], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"this card block fails:\n{code}\n{proc.stderr[-3000:]}"
        outputs.append((code, proc.stdout))
    return outputs


def test_every_block_of_a_grey_model_card_runs_as_written(grey_folder, tmp_path):
    """Was: `import timm_asap` then `pipeline(...)` raised `ValueError: Unrecognized image processor`."""
    outputs = _run_card_blocks(grey_folder, GREY_REPO, True, tmp_path)
    classified = [out for code, out in outputs if 'classifier(' in code]
    assert len(classified) == 2 and all("'label': '" in out for out in classified)
    names = json.loads((grey_folder / 'config.json').read_text())['label_names']
    assert all(any(f"'label': '{n}'" in out for n in names) for out in classified)


def test_every_block_of_a_three_class_rgb_model_card_runs_as_written(rgb_folder, tmp_path):
    """Was: the timm block asked for the top 5 of 3 classes (`probs.topk(5)`: RuntimeError)."""
    outputs = _run_card_blocks(rgb_folder, RGB_REPO, False, tmp_path)
    assert all(any(f"'label': '{n}'" in out for n in RGB_LABELS) for code, out in outputs if 'classifier(' in code)


def test_card_precision_is_what_the_run_used(grey_folder):
    """Was: 'bfloat16 autocast on CUDA' for a run on the CPU in float32 (AMP off)."""
    metrics = json.loads((grey_folder.parent / 'train' / 'metrics.json').read_text())
    assert metrics['amp'] == 'off' and metrics['device'] == 'cpu'
    assert load_config(grey_folder / 'run_config.yaml').train.amp_dtype == 'bfloat16'  # asked, not used
    assert _recipe_row(grey_folder, 'Precision') == 'float32 (no autocast), on cpu'
    assert 'bfloat16' not in _card(grey_folder).text


def test_card_of_a_model_in_memory_says_precision_not_recorded(rgb_folder):
    assert _recipe_row(rgb_folder, 'Precision').startswith('not recorded')


def test_asap_card_carries_no_baseline_tag(grey_folder, rgb_folder):
    """Was: an ASAP model published with a recipe shared with the baseline carried the tag 'baseline'."""
    grey_tags, rgb_tags = _card(grey_folder).data.tags, _card(rgb_folder).data.tags
    assert 'baseline' not in grey_tags and {'asap', 'fashion-mnist'} <= set(grey_tags)
    assert 'asap' not in rgb_tags and {'baseline', 'pets'} <= set(rgb_tags)


def test_card_separates_validation_during_training_from_the_results(grey_folder):
    """Was: 'evaluation split test, a fixed random subset of 2000 images' in the recipe read as the results'
    data; the results section named no image counts."""
    validation = _recipe_row(grey_folder, 'Validation during training')
    assert validation.startswith('split `test`, a fixed random subset of 8 images')
    assert 'evaluation split' not in _card(grey_folder).text
    results = _card(grey_folder).text.split('## Evaluation results', 1)[1].split('## Usage', 1)[0]
    assert 'Images behind these numbers, from fashion_mnist: clean accuracy 64, shift consistency 64.' in results


# ---- 10: scripts/gpu_check.sh -----------------------------------------------------------------------

def test_gpu_check_refuses_an_interpreter_without_torch_at_once(tmp_path):
    """Was: with a python lacking torch, tracebacks, 0 result files and exit 0."""
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True, capture_output=True)
    python = venv / 'bin' / 'python'
    assert subprocess.run([str(python), '-c', 'import torch'], capture_output=True).returncode != 0
    data = tmp_path / 'fmnist'
    data.mkdir()
    for name in ('train-images-idx3-ubyte.gz', 't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'):
        (data / name).write_bytes(b'')  # only their presence is checked before the interpreter
    out = tmp_path / 'out'
    proc = subprocess.run(['bash', str(ROOT / 'scripts' / 'gpu_check.sh'), '--cpu', '--data', str(data),
                           '--out', str(out)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, 'PYTHON': str(python), 'TMPDIR': str(tmp_path)})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in proc.stderr and proc.stdout == ''
    assert f"the interpreter '{python}'" in lines[0] and "No module named 'torch'" in lines[0]
    assert 'set PYTHON to' in lines[0]
    assert not out.exists() and not list(tmp_path.glob('gpu_check_work.*'))  # nothing ran, nothing written


# ---- 11: benchmark ratios measured on noise -----------------------------------------------------------

def _model_rows(base_ms, asap_ms, device='cpu', dtype='float32', channels_last=False):
    """benchmark_models rows (as it writes them) of resnet50 and resnet50_asap with the given per-round times."""
    import statistics
    rows = []
    for model, ms in (('resnet50', base_ms), ('resnet50_asap', asap_ms)):
        ratio = round(statistics.median(b / t for b, t in zip(base_ms, ms)), 3)
        rows.append(dict(device=device, dtype=dtype, channels_last=channels_last, compile=False, batch=32,
                         img_size=224, model=model, **{'pass': 'infer'}, ms=statistics.median(ms),
                         img_per_s=1.0, baseline='resnet50', ratio_vs_baseline=ratio, ratio_vs_resnet50=ratio,
                         round_ms=list(ms), peak_mb=None))
    return rows


def test_benchmark_models_says_unreliable_for_rounds_that_disagree():
    """Was: resnet50 at 2518, 530 and 2954 ms in three rounds printed 'throughput 5.011x (target >= 0.9x): met'."""
    from timm_asap_lab.tools.benchmark_models import target_checks
    [line] = target_checks(_model_rows([2518, 530, 2954], [502.5, 528, 589.5]))
    assert 'resnet50_asap / resnet50 throughput 5.011x (min 1.004, max 5.011 over 3 rounds)' in line
    assert line.endswith('unreliable: 3 rounds, at least 5 are needed for a verdict') and ': met' not in line
    # nine such rounds: still no verdict, the rounds disagree
    [line] = target_checks(_model_rows([2518, 530, 2954] * 3, [502.5, 528, 589.5] * 3))
    assert 'unreliable: the rounds disagree: their ratios run from 1x to 5.01x' in line
    # nine rounds that agree: a verdict either way
    steady = [100, 101, 99, 100, 102, 98, 100, 101, 99]
    [line] = target_checks(_model_rows(steady, [t / 0.97 for t in steady]))
    assert line.endswith('(target >= 0.9x): met')
    [line] = target_checks(_model_rows(steady, [t / 0.8 for t in steady]))
    assert line.endswith('(target >= 0.9x): NOT met')
    [line] = target_checks(_model_rows(steady, [t / r for t, r in zip(steady, [0.88, 0.92] * 4 + [0.9])]))
    assert 'unreliable: the target 0.9x lies inside the 90% interval of the median, 0.88x to 0.92x' in line


def test_benchmark_layers_says_unreliable_for_rounds_that_disagree():
    """Was: the layer ratios were ratios of medians, printed without their spread or a verdict's support."""
    from timm_asap_lab.tools.benchmark_layers import format_table, target_checks
    times = {'asap': [10, 10, 10, 10, 10], 'asap_fft': [70, 8, 65, 72, 60], 'avg_pool2d': [5, 5, 5, 5, 5],
             'blurpool': [30, 30, 30, 30, 30]}
    rows = []
    for method, ms in times.items():
        row = dict(device='cpu', dtype='float32', batch=32, shape='64x112x112', channels_last=False,
                   method=method, ms=sorted(ms)[2], round_ms=ms, **{'pass': 'forward'})
        if method == 'asap':
            row.update(speedup_vs_fft=6.5, ratio_vs_avg_pool2d=2.0, ratio_vs_blurpool=0.33)
        rows.append(row)
    fft, avg = target_checks(rows)
    assert fft.startswith('cpu float32 asap_fft time / asap time >= 5x at every shape: unreliable at 1 of 1 cells')
    assert '6.50x (min 0.80, max 7.20 over 5 rounds)' in fft and 'the rounds disagree' in fft
    assert avg.endswith('asap time / avg_pool2d time <= 2.5x at every shape: met at all 1 cells (medians 2.00x to 2.00x)')
    assert '| 6.5x |' in format_table(rows)  # rows without a recorded spread still print
