"""Safety evaluation and reports.

``rapo-ray eval CONFIG --model PATH ...`` (:func:`cmd_eval`): ASR per set and level (judge and refusal phrases),
over-refusal, think-block shape, utility (HumanEval, GSM8K), each rate with an interval; a report folder with
``metrics.json``, ``report.md`` and plots. ``rapo-ray report RUN_DIR`` (:func:`cmd_report`): a training run's
curves from its ``metrics.jsonl``.
"""
from rapo_ray.eval.curves import ReportError, cmd_report
from rapo_ray.eval.runner import EvalError, cmd_eval, evaluate

__all__ = ["EvalError", "ReportError", "cmd_eval", "cmd_report", "evaluate"]
