"""The kernels: source training and transfer, and the evaluate-report-checkpoint step they share.

Each kernel is `run_*(spec, ctx, report) -> final metrics`: plain arguments and a report(epoch, metrics)
callable, so it runs without Ray or a database. Names, method traits and param defaults come from
workers.catalog.
"""

from workers.kernels.common import KernelData, evaluate_report_checkpoint, load_kernel_data, resume
from workers.kernels.source import (
    resolve_source_params,
    robust_eval_threat,
    run_source,
    spec_digest,
    training_perturbation,
)
from workers.kernels.transfer import resolve_transfer_params, run_transfer, transfer_asr

__all__ = [
    "KernelData",
    "evaluate_report_checkpoint",
    "load_kernel_data",
    "resolve_source_params",
    "resolve_transfer_params",
    "resume",
    "robust_eval_threat",
    "run_source",
    "run_transfer",
    "spec_digest",
    "training_perturbation",
    "transfer_asr",
]
