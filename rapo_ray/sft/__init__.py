"""The SFT stage: level-adaptive safe-reasoning data curation (``rapo-ray sft-data``) and format-alignment
fine-tuning (``rapo-ray sft``), built on the RL stage's rollout workers, judge and learner group."""
from rapo_ray.sft.curate import SFTDataError, cmd_sft_data, curate, data_dir, import_star1
from rapo_ray.sft.records import FILTERS, build_report, filter_results, format_report, make_record
from rapo_ray.sft.template import template_paragraph
from rapo_ray.sft.trainer import SFTError, build_samples, cmd_sft, load_rows, model_out, sft_dir

__all__ = ["FILTERS", "SFTDataError", "SFTError", "build_report", "build_samples", "cmd_sft", "cmd_sft_data",
           "curate", "data_dir", "filter_results", "format_report", "import_star1", "load_rows", "make_record",
           "model_out", "sft_dir", "template_paragraph"]
