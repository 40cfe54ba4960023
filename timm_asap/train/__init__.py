"""Fine-tuning: base timm checkpoint -> ASAP/FLC model, single process or torchrun DDP."""
from .._deprecation import deprecated_getattr
from .checkpoint import load_run_checkpoint, save_checkpoint, save_weights
from .distributed import DistEnv, init_distributed
from .errors import CheckpointError, NonFiniteLossError, RunExistsError, TrainingError, TrainingInterrupted
from .evaluate import validate
from .trainer import TrainState, check_reusable, config_differences, ensure_finetuned, finetune, load_results
from ..hub.config_model import check_pooling, create_model_from_config
from .model import (BaseSource, check_conversion, convert_from_base, create_teacher, load_base_model, resolve_base,
                    resolve_run_config_base)

__all__ = [
    'finetune', 'ensure_finetuned', 'check_reusable', 'load_results', 'TrainState', 'config_differences',
    'TrainingError', 'TrainingInterrupted', 'NonFiniteLossError', 'CheckpointError', 'RunExistsError',
    'create_model_from_config', 'load_base_model', 'convert_from_base', 'create_teacher', 'check_pooling',
    'BaseSource', 'resolve_base', 'resolve_run_config_base', 'check_conversion',
    'validate', 'DistEnv', 'init_distributed', 'load_run_checkpoint', 'save_checkpoint', 'save_weights',
]


def __getattr__(name: str):
    # timm.models.load_checkpoint loads weights into a model; this reads a fine-tuning checkpoint
    return deprecated_getattr(__name__, name, {'load_checkpoint': ('load_run_checkpoint', lambda: load_run_checkpoint)})
