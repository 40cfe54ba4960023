"""Robustness evaluation: clean accuracy, common corruptions, adversarial attacks, shift consistency.

Heavy optional dependencies (ART for attacks; OpenCV, scikit-image, SciPy and corrupt-tta's frost
textures for corruptions) are imported on first use; a missing one raises an ImportError naming
``pip install -e '.[eval]'`` (run in the timm-asap checkout).
"""
from timm_asap_lab.evaluation.attacks import (ATTACKS, AUTOATTACK_COMPONENTS, NORMS, AttackSpec, check_eps,
                                              evaluate_attacks, parse_eps, run_attack)
from timm_asap_lab.evaluation.compare import compare_models
from timm_asap_lab.evaluation.corruptions import (ALL_CORRUPTIONS, CORRUPTION_GROUPS, CORRUPTIONS, EXTRA_CORRUPTIONS,
                                                  PROTOCOLS, SEVERITIES, check_corruptions, check_severities, corrupt)
from timm_asap_lab.evaluation.data import (CifarCDataset, EvalImages, ImageNetCFolder, create_eval_dataset, load_images,
                                           to_uint8_chw)
from timm_asap_lab.evaluation.engine import evaluate_clean, evaluate_corruptions
from timm_asap_lab.evaluation.provenance import evaluation_record, record_differences
from timm_asap_lab.evaluation.report import markdown_report, parse_markdown_tables, read_results, write_results
from timm_asap_lab.evaluation.runner import EvalOptions, build_attack_specs, evaluate_models, write_artefacts
from timm_asap_lab.evaluation.shift import aliasing_view, evaluate_shift_consistency
from timm_asap_lab.evaluation.summary import ALEXNET_ERR, corruption_summary
from timm_asap_lab.evaluation.wrapper import NormalizedModel, check_eval_mode, create_eval_model, wrap_model

__all__ = [
    'evaluate_models', 'EvalOptions', 'compare_models', 'build_attack_specs', 'write_artefacts',
    'evaluate_clean', 'evaluate_corruptions', 'evaluate_attacks', 'run_attack', 'evaluate_shift_consistency',
    'aliasing_view', 'corruption_summary',
    'corrupt', 'CORRUPTIONS', 'EXTRA_CORRUPTIONS', 'ALL_CORRUPTIONS', 'CORRUPTION_GROUPS', 'SEVERITIES', 'PROTOCOLS',
    'check_corruptions', 'check_severities', 'ALEXNET_ERR',
    'AttackSpec', 'ATTACKS', 'NORMS', 'AUTOATTACK_COMPONENTS', 'check_eps', 'parse_eps',
    'EvalImages', 'load_images', 'create_eval_dataset', 'ImageNetCFolder', 'CifarCDataset', 'to_uint8_chw',
    'NormalizedModel', 'wrap_model', 'create_eval_model', 'check_eval_mode',
    'write_results', 'read_results', 'markdown_report', 'parse_markdown_tables',
    'evaluation_record', 'record_differences',
]
