"""The model card (README.md) of a published model: Hub metadata, results, usage, recipe and citation."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from huggingface_hub import EvalResult, ModelCardData

from timm_asap.models import is_variant
from timm_asap.models.weight_tags import weight_tag
from timm_asap.version import __version__
from timm_asap_lab.config import RunConfig, base_source_kind
from timm_asap_lab.data.fashion_mnist import FASHION_MNIST_NAMES
from timm_asap_lab.publish.results import EvalResults

__all__ = ['CITATIONS', 'DATASET_NAMES', 'POOLING_TAGS', 'dataset_label', 'base_model_repo', 'pooling_tags',
           'card_metadata', 'training_text', 'build_model_card']

DATASET_NAMES = {
    **{name: 'Fashion-MNIST' for name in FASHION_MNIST_NAMES}, 'zalando-datasets/fashion_mnist': 'Fashion-MNIST',
    'imagenet': 'ImageNet-1k', 'imagenet-1k': 'ImageNet-1k', 'ilsvrc/imagenet-1k': 'ImageNet-1k',
    'imagenet_1k': 'ImageNet-1k', 'timm/imagenet-1k-wds': 'ImageNet-1k',
}
# metric ids of results.json -> Hub metric types
_METRIC_TYPES = {'top1': 'accuracy', 'top5': 'top_5_accuracy'}
#: card tags that name a pooling kind; a card carries only its own model's (see :func:`pooling_tags`)
POOLING_TAGS = frozenset({'asap', 'flc', 'baseline'})

CITATIONS = {
    'asap': """@article{grabinski2023asap,
  title   = {Fix your downsampling ASAP! Be natively more robust via Aliasing and Spectral Artifact free Pooling},
  author  = {Grabinski, Julia and Keuper, Janis and Keuper, Margret},
  journal = {arXiv preprint arXiv:2307.09804},
  year    = {2023}
}""",
    'flc': """@inproceedings{grabinski2022flc,
  title     = {FrequencyLowCut Pooling -- Plug \\& Play against Catastrophic Overfitting},
  author    = {Grabinski, Julia and Jung, Steffen and Keuper, Janis and Keuper, Margret},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2022},
  note      = {arXiv:2204.00491}
}""",
    'timm': """@misc{rw2019timm,
  author       = {Ross Wightman},
  title        = {PyTorch Image Models},
  year         = {2019},
  publisher    = {GitHub},
  journal      = {GitHub repository},
  doi          = {10.5281/zenodo.4414861},
  howpublished = {\\url{https://github.com/huggingface/pytorch-image-models}}
}""",
}

_POOL_TEXT = {
    'asap': ("a timm CNN with ASAP pooling (Aliasing and Spectral Artifact free Pooling; Grabinski, Keuper & Keuper, "
             "arXiv:2307.09804): every stride-2 downsampling first pools in the frequency domain (zero padding, "
             "a separable sqrt-Hamming window and a low-frequency crop), then applies the same operation at stride 1"),
    'flc': ("a timm CNN with FLC pooling (FrequencyLowCut; Grabinski et al., ECCV 2022): every stride-2 downsampling first keeps "
            "only the low-frequency band of the input's spectrum, then applies the same operation at stride 1"),
    'none': "the unmodified architecture (the baseline without spectral pooling)",
}


def _dataset_name(name: str | None) -> str:
    if not name:
        return 'unknown'
    return DATASET_NAMES.get(name.lower(), name)


def dataset_label(cfg: RunConfig) -> str:
    """A readable name of the run's dataset (``data.dataset``, else the first Hub dataset id)."""
    return _dataset_name(cfg.data.dataset or (cfg.hub.datasets[0] if cfg.hub.datasets else ''))


def base_model_repo(base: str) -> str | None:
    """The Hub repo id of a base checkpoint (e.g. ``resnet50.tv_in1k`` -> ``timm/resnet50.tv_in1k``,
    ``hf-hub:org/name@rev`` -> ``org/name``); None for local bases (a file, a run folder, ``local-dir:``)."""
    kind = base_source_kind(base)
    if kind == 'hf-hub':
        return base[len('hf-hub:'):].partition('@')[0]
    if kind != 'name':
        return None
    try:
        cfg = timm.models.get_pretrained_cfg(base, allow_unregistered=False)
    except (RuntimeError, ValueError, KeyError):
        return None
    return getattr(cfg, 'hf_hub_id', None) or None


def _eval_results(cfg: RunConfig, results: EvalResults, eval_model: str) -> list[EvalResult]:
    dataset_id = cfg.hub.datasets[0] if cfg.hub.datasets else (results.dataset or cfg.data.dataset or 'unknown')
    out = []
    for m in results.metrics(eval_model):
        out.append(EvalResult(
            task_type='image-classification', task_name='Image Classification',
            dataset_type=dataset_id, dataset_name=_dataset_name(m.dataset or results.dataset or dataset_id),
            dataset_split=cfg.data.val_split or None,
            metric_type=_METRIC_TYPES.get(m.metric, m.metric), metric_value=round(float(m.value), 4),
            metric_name=m.name))
    return out


def pooling_tags(pool: str) -> list[str]:
    """The card tags that say which pooling the model has: ``[pool, 'anti-aliasing', 'robustness']`` for ASAP
    and FLC, ``['baseline']`` for the model without spectral pooling."""
    return ['baseline'] if pool == 'none' else [pool, 'anti-aliasing', 'robustness']


def card_metadata(cfg: RunConfig, results: EvalResults | None, eval_model: str | None = None) -> ModelCardData:
    """The card's YAML metadata (library, licence, tags, datasets, base model, pipeline, model-index).

    The tags naming a pooling kind (:data:`POOLING_TAGS`) come from ``model.pool`` alone: such a tag in
    ``hub.tags`` that is not this model's (e.g. ``baseline`` in a recipe shared with the baseline, applied
    to an ASAP model) is left out.

    Args:
        cfg: the run configuration.
        results: evaluation results (None: no model-index).
        eval_model: the published model's name in ``results`` (see :meth:`EvalResults.select_model`).
    """
    tags = ['image-classification', 'timm', 'timm-asap', 'transformers'] + pooling_tags(cfg.model.pool)
    tags += [t for t in cfg.hub.tags if t not in tags and t not in POOLING_TAGS]
    eval_results = None
    if results is not None:
        eval_results = _eval_results(cfg, results, eval_model or results.select_model(cfg.model.architecture, cfg.name))
    return ModelCardData(
        library_name='timm',
        license=cfg.hub.license or None,
        tags=tags,
        datasets=list(cfg.hub.datasets) or None,
        base_model=base_model_repo(cfg.model.base),
        pipeline_tag='image-classification',
        model_name=cfg.name,
        eval_results=eval_results or None,
    )


def _registry_note(cfg: RunConfig, repo_id: str) -> str:
    """A sentence on loading by registry name, only where timm-asap's registry points that name at ``repo_id``."""
    tag = weight_tag(cfg.name)
    if tag is None or tag.hf_hub_id != repo_id:
        return ''
    if tag.published:
        return (f"\n\n`timm.create_model('{cfg.name}', pretrained=True)` loads the same weights through "
                "timm-asap's registry.")
    return (f"\n\ntimm-asap registers the name `{cfg.name}` for these weights; once a release marks the tag "
            f"published, `timm.create_model('{cfg.name}', pretrained=True)` loads them too (timm-asap "
            f"{__version__} does not yet).")


def _usage(cfg: RunConfig, repo_id: str, input_size: tuple[int, ...], num_classes: int) -> str:
    grey = input_size[0] == 1
    top = min(5, num_classes)
    image = ("  # your image; this model takes one grey channel" if grey else "  # your image")
    return f"""`image.png` stands for your own image file.

### timm

```python
import timm_asap  # registers the ASAP/FLC architectures in timm: import it first
import timm
import torch
from PIL import Image

model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()
data_config = timm.data.resolve_model_data_config(model)  # input size {tuple(input_size)}
transform = timm.data.create_transform(**data_config, is_training=False)

img = Image.open('image.png').convert('{'L' if grey else 'RGB'}'){image}
with torch.inference_mode():
    probs = model(transform(img).unsqueeze(0)).softmax(dim=-1)
top_prob, top_idx = probs.topk({top})
print(top_prob, top_idx)
```{_registry_note(cfg, repo_id)}

{_transformers_usage(repo_id, grey)}

{_import_note(cfg.model.architecture)}

### Checked loading

timm-asap's own loaders check the files (weights digest, architecture, pooling) before building the model:

```python
from timm_asap import hub

model = hub.load_model('hf-hub:{repo_id}')  # the timm model, in eval mode
classifier = hub.transformers_pipeline('{repo_id}')  # the transformers pipeline
print(classifier('image.png'))
```

### Offline use

Once the files are in the Hugging Face cache (any load above fills it), set `HF_HUB_OFFLINE=1` and load
with the same calls: nothing is downloaded. `timm.create_model('local-dir:/path/to/folder', pretrained=True)`
loads a copy of this repository from a local folder."""


def _import_note(arch: str) -> str:
    if is_variant(arch):
        return (f"Without `import timm_asap`, timm does not know the architecture `{arch}` and loading fails "
                "(transformers then wrongly suggests upgrading timm).")
    return f"`{arch}` is a plain timm architecture; `import timm_asap` is harmless and keeps the snippets uniform."


def _transformers_usage(repo_id: str, grey: bool) -> str:
    if grey:
        head = ("import timm_asap.hub  # registers the ASAP/FLC architectures in timm before transformers builds "
                "the model\nfrom transformers import AutoModelForImageClassification, pipeline\n\n"
                "timm_asap.hub.register_image_processor()  # the grey-image processor this model's config names\n")
        note = ("\n\nThis model takes one-channel (grey) images. transformers' pipeline hands every image over as "
                "RGB; the model's config names the `TimmAsapImageProcessor`, which converts them back to grey "
                "first. `timm_asap.hub.register_image_processor()` registers it with transformers: `import "
                "timm_asap` alone does not, and without it the pipeline stops with `Unrecognized image "
                "processor`. The checked loaders below register it themselves.")
    else:
        head = ("import timm_asap  # registers the ASAP/FLC architectures in timm before transformers builds the "
                "model\nfrom transformers import AutoModelForImageClassification, pipeline\n\n")
        note = ''
    return f"""### transformers

```python
{head}classifier = pipeline('image-classification', model='{repo_id}')
print(classifier('image.png'))

model = AutoModelForImageClassification.from_pretrained('{repo_id}').eval()
```{note}"""


def _fmt(value: Any) -> str:
    if value is None or value == '' or value == []:
        return '-'
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ', '.join(_fmt(v) for v in value)
    return str(value)


def _placement(cfg: RunConfig) -> str:
    """The card's note on a placement other than the paper's (empty for ``pool_position: before``)."""
    if cfg.model.pool_position == 'before':
        return ''
    return (f", placed `{cfg.model.pool_position}` the strided convolutions (each runs at stride 1, then the "
            f"pooling: BlurPool's placement)")


def training_text(training: dict[str, Any] | None) -> str:
    """The precision and device a run trained with, from its ``metrics.json`` (what the run used, not what
    its config asked for: ``train.amp_dtype`` applies on CUDA only).

    Args:
        training: the run's ``metrics.json`` (keys ``amp``, ``device``, ``world_size``), or None.

    Returns:
        E.g. ``'float32 (no autocast), on cpu'`` or ``'bfloat16 autocast, on cuda:0 (NVIDIA H100), 4 processes'``.

    Example:
        >>> training_text({'amp': 'off', 'device': 'cpu', 'world_size': 1})
        'float32 (no autocast), on cpu'
    """
    if not training or not training.get('amp'):
        return "not recorded (published without the run's metrics.json)"
    amp = training['amp']
    text = 'float32 (no autocast)' if amp == 'off' else (
        f"{amp} autocast" + (' with a gradient scaler' if amp == 'float16' else ''))
    if training.get('device'):
        text += f", on {training['device']}"
    if (training.get('world_size') or 1) > 1:
        text += f", {training['world_size']} processes"
    return text


def _split_text(split: str, subset: int | None) -> str:
    return f"split `{split}`, " + (f"a fixed random subset of {subset} images" if subset else 'all images')


def _epochs_text(cfg: RunConfig, training: dict[str, Any] | None) -> str:
    planned = cfg.train.epochs
    done = (training or {}).get('epochs_completed')
    if done is None or done == planned:
        return str(planned)
    return f"{done} of {planned} planned (run status {training.get('status', 'unknown')})"


def _recipe(cfg: RunConfig, recipe_file: str, pcfg: dict[str, Any], training: dict[str, Any] | None) -> str:
    t, d = cfg.train, cfg.data
    rows = [
        ('Base checkpoint', f"`{cfg.model.base}` (zero-shot conversion, then fine-tuning)" if cfg.model.base
         else 'random initialisation'),
        ('Pooling', f"{cfg.model.pool} (mode `{cfg.model.mode}`){_placement(cfg)}"),
        ('Training data', f"{dataset_label(cfg)}, {_split_text(d.train_split, d.train_subset)}"),
        ('Validation during training', f"{_split_text(d.val_split, d.val_subset)} (watched while training; the "
                                       "evaluation results above are a separate run)" if d.val_split else 'none'),
        ('Input', f"{cfg.model.in_chans} x {cfg.model.img_size} x {cfg.model.img_size}, interpolation "
                  f"{pcfg.get('interpolation', d.interpolation)}, crop_pct {_fmt(pcfg.get('crop_pct', d.crop_pct))}"),
        ('Normalisation', f"mean {_fmt(pcfg.get('mean', d.mean))}, std {_fmt(pcfg.get('std', d.std))}"),
        ('Epochs', _epochs_text(cfg, training)), ('Batch size', f"{t.batch_size} x {t.grad_accum_steps} accumulation steps"),
        ('Optimizer', f"{t.opt}, lr {t.lr:g}, momentum {t.momentum:g}, weight decay {t.weight_decay:g}"),
        ('Schedule', f"{t.sched}, {t.warmup_epochs} warm-up epochs from {t.warmup_lr:g}, min lr {t.min_lr:g}"),
        ('Regularisation', f"label smoothing {t.label_smoothing:g}, mixup {t.mixup:g}, cutmix {t.cutmix:g}"
                           f"{f', gradient clipping {t.clip_grad:g}' if t.clip_grad else ''}"),
        ('EMA', f"decay {t.model_ema_decay:g}" if t.model_ema else 'off'),
        ('Distillation', f"from `{t.distill.teacher or cfg.model.base}`, alpha {t.distill.alpha:g}, "
                         f"temperature {t.distill.temperature:g}" if t.distill.enabled else 'off'),
        ('Precision', training_text(training)), ('Seed', t.seed),
    ]
    table = '\n'.join(['| Setting | Value |', '|---|---|'] + [f"| {k} | {_fmt(v)} |" for k, v in rows])
    return f"{table}\n\nThe complete resolved configuration is [`{recipe_file}`]({recipe_file})."


def build_model_card(cfg: RunConfig, repo_id: str, config_json: dict[str, Any], results: EvalResults | None,
                     plots: list[str], num_params: int, recipe_file: str = 'run_config.yaml',
                     eval_model: str | None = None, training: dict[str, Any] | None = None) -> str:
    """The README.md text of a Hub folder.

    Args:
        cfg: the run configuration (model, data, recipe, hub sections).
        repo_id: Hub repository the card is written for.
        config_json: the folder's timm config.json (input size, labels, licence).
        results: evaluation results (None: the card says the model is unevaluated).
        plots: plot paths relative to the folder, embedded in the results section.
        num_params: parameter count of the published model.
        recipe_file: name of the resolved run configuration file in the folder.
        eval_model: the published model's name in ``results``.
        training: the run's ``metrics.json`` (what the run used: precision, device, epochs completed);
            None: the card says these were not recorded.

    Returns:
        Markdown with a YAML metadata header.
    """
    if results is not None and eval_model is None:
        eval_model = results.select_model(cfg.model.architecture, cfg.name)
    meta = card_metadata(cfg, results, eval_model)
    pcfg = config_json.get('pretrained_cfg', {})
    input_size = tuple(pcfg.get('input_size', (cfg.model.in_chans, cfg.model.img_size, cfg.model.img_size)))
    pool = cfg.model.pool
    dataset = dataset_label(cfg)
    label_names = config_json.get('label_names')
    details = [
        ('Model type', 'image classification / feature backbone'),
        ('Architecture', f"`{cfg.model.architecture}`" + (" (registered in timm by `import timm_asap`)"
                                                         if is_variant(cfg.model.architecture) else '')),
        ('Pooling', f"{pool.upper()}, band mode `{cfg.model.mode}`{_placement(cfg)}" if pool != 'none'
         else 'none (baseline)'),
        ('Base checkpoint', f"`{cfg.model.base}`" if cfg.model.base else 'none (trained from scratch)'),
        ('Dataset', dataset),
        ('Classes', f"{config_json.get('num_classes')}"
                    + (f" ({', '.join(map(str, label_names[:10]))}{', ...' if len(label_names) > 10 else ''})"
                       if label_names else '')),
        ('Params (M)', f"{num_params / 1e6:.2f}"),
        ('Image size', f"{input_size[0]} x {input_size[1]} x {input_size[2]}"),
        ('Licence', cfg.hub.license or 'not given'),
        ('Papers', 'Fix your downsampling ASAP! (arXiv:2307.09804); FrequencyLowCut Pooling (arXiv:2204.00491)'),
        ('Software', f"timm-asap {__version__}, timm {timm.__version__}"),
    ]
    if cfg.model.base:
        origin = (f"The weights of `{cfg.model.base}` were converted without retraining (the pooling changes no "
                  f"weight shape) and then fine-tuned on {dataset} with the recipe below.")
    else:
        origin = f"It was trained from random initialisation on {dataset} with the recipe below."
    body = [f"# Model card for {cfg.name}", '',
            f"`{cfg.model.architecture}`: {_POOL_TEXT[pool]}. {origin}", '',
            '## Model details', '']
    body += [f"- **{k}:** {v}" for k, v in details]
    body += ['', '## Evaluation results', '']
    if results is None:
        body += ['This model was published without evaluation results.']
    else:
        others = [m for m in results.models if m != eval_model]
        body += [f"This model is `{eval_model}` in the tables"
                 + (f"; also evaluated on the same images: {', '.join(f'`{m}`' for m in others)}." if others else '.'),
                 '', results.markdown_table(), '', results.image_counts_text(eval_model)]
        for p in plots:
            body += ['', f"![{Path(p).stem.replace('_', ' ')}]({p})"]
        body += ['', 'The raw numbers are in [`results.json`](results.json).']
    num_classes = int(config_json.get('num_classes') or cfg.model.num_classes)
    body += ['', '## Usage', '', _usage(cfg, repo_id, input_size, num_classes), '', '## Training recipe', '',
             _recipe(cfg, recipe_file, pcfg, training), '', '## Citation', '']
    keys = ['asap', 'flc', 'timm'] if pool != 'flc' else ['flc', 'asap', 'timm']
    for key in keys:
        body += ['```bibtex', CITATIONS[key], '```', '']
    return f"---\n{meta.to_yaml()}\n---\n\n" + '\n'.join(body).rstrip() + '\n'
