"""The core trainer's former module name, kept importable (and registered as
`trainer_name='classification_trainer'`) for existing code, configs and workdirs.

The trainer now lives in `trainer` (the loop), `steps` (train / eval steps) and `evaluation`
(eval passes); it trains any task, not only classification.
"""

from scenic.train_lib.evaluation import evaluate, final_evaluation, format_metrics, multiview_test
from scenic.train_lib.steps import AXIS, eval_step, multiview_eval_step, train_step
from scenic.train_lib.train_state import TrainState
from scenic.train_lib.trainer import (
    FREE_SECTIONS,
    NonFiniteLossError,
    TrainResult,
    build_model,
    check_config,
    default_config,
    evaluate_checkpoint,
    initialize_state,
    total_train_steps,
    train,
)

__all__ = [
    "AXIS",
    "FREE_SECTIONS",
    "NonFiniteLossError",
    "TrainResult",
    "TrainState",
    "build_model",
    "check_config",
    "default_config",
    "eval_step",
    "evaluate",
    "evaluate_checkpoint",
    "final_evaluation",
    "format_metrics",
    "initialize_state",
    "multiview_eval_step",
    "multiview_test",
    "total_train_steps",
    "train",
    "train_step",
]
