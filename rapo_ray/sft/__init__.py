"""The SFT stage: level-adaptive safe-reasoning data curation (``rapo-ray sft-data``) and format-alignment
fine-tuning (``rapo-ray sft``), built on the RL stage's rollout workers, judge and learner group."""
from rapo_ray.sft.curate import SFTDataError, cmd_sft_data, curate, data_dir
from rapo_ray.sft.records import (FILTERS, TokenCounter, build_report, completion_budget, filter_results,
                                  format_report, make_record)
from rapo_ray.sft.refusals import template_refusal
from rapo_ray.sft.star1 import Star1Error, read_star1, star1_ingredient
from rapo_ray.sft.template import template_paragraph
from rapo_ray.sft.trainer import SFTError, build_samples, cmd_sft, load_rows, model_out, sft_dir

__all__ = ["FILTERS", "SFTDataError", "SFTError", "Star1Error", "TokenCounter", "build_report", "build_samples",
           "cmd_sft", "cmd_sft_data", "completion_budget", "curate", "data_dir", "filter_results", "format_report",
           "load_rows", "make_record", "model_out", "read_star1", "sft_dir", "star1_ingredient", "template_paragraph",
           "template_refusal"]
