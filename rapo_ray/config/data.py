"""``data:``, the prompt recipe and its split (``rapo_ray/data``)."""
from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from .base import _Section


class DatasetSpec(_Section):
    """One entry of a data recipe (readers and layouts: ``rapo_ray/data/readers.py``)."""

    name: str
    cap: int | None = Field(default=None, ge=1)  # rows kept from this set (seeded sample), after wrap and length limit
    path: str | None = None  # explicit file/folder override; relative paths are resolved against the data root
    source: str | None = None  # the rows' `source` (default: the name; a generic file: its stem)
    # Generic readers (jsonl/csv/parquet): column mapping and fixed labels. A named reader uses
    # prompt_column only when it is set explicitly.
    prompt_column: str | None = None  # generic readers: default "prompt"
    # Generic readers: a column of chat messages ([{role, content}, ...], ending with a user turn) as the prompt;
    # default: "messages" when the file has it and neither prompt_column nor a "prompt" column.
    messages_column: str | None = None
    label_column: str | None = None
    level_column: str | None = None
    id_column: str | None = None
    harmful_label: int | None = Field(default=None, ge=0, le=1)
    level: int | None = Field(default=None, ge=1)
    system_prompt: str | None = None  # for this set's rows without a system message; wins over data.system_prompt
    # Wrap plain harmful behaviours into level-graded jailbreaks (see rapo_ray.data.wrap).
    wrap: bool = False
    # Oversampling: this set's train rows are served `repeat` times an epoch (copies carry ids `<id>~2`, ...);
    # its dev and test rows are not repeated. OpenRLHF's prompt_data_probs, in whole numbers.
    repeat: int = Field(default=1, ge=1, le=100)

    @model_validator(mode="after")
    def _one_prompt_column(self) -> DatasetSpec:
        if self.prompt_column and self.messages_column:
            raise ValueError("give at most one of prompt_column and messages_column")
        return self


def _default_recipe() -> list[DatasetSpec]:
    # Packaged sets (``rapo-ray data fetch``): real harmful behaviours wrapped to levels 1-3, real benign prompts.
    return [DatasetSpec(name="advbench_pkg", cap=150, wrap=True),
            DatasetSpec(name="harmbench_pkg", cap=150, wrap=True),
            DatasetSpec(name="jbb_benign_pkg"), DatasetSpec(name="wsr_benign_pkg")]


class DataConfig(_Section):
    root: str | None = None  # else $RAPO_DATA_DIR, else ./data
    recipe: list[DatasetSpec] = Field(default_factory=_default_recipe, min_length=1)
    # The split (rapo_ray.data.split): rows are grouped by origin id and by normalised behaviour text, across
    # sets, so a behaviour and every wrapping of it land on one side. test: groups whose seeded hash falls below
    # test_fraction (the same behaviours for any recipe and cap, never trained on); dev ("eval"):
    # round(eval_fraction x a source's groups) of its other groups, for tuning and in-training eval.
    eval_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    split_seed: int = 0  # the split's own seed: changing the job seed does not move behaviours between splits
    # Recipe entries (by name or source) that are evaluation sets only: a training set holding one fails.
    # XSTest (the over-refusal test set) is always one of them.
    eval_only: list[str] = Field(default_factory=lambda: ["xstest"])
    max_prompt_tokens: int = Field(default=1024, ge=8)  # the conversation's text: system prompt and every turn
    # The system prompt of every row with none of its own (a system message) or of its set (system_prompt), in
    # every stage that prompts the model: RL, evaluation, SFT curation and training, verdict pairs.
    system_prompt: str | None = None
    # Level mix produced by the wrap step: share of behaviours kept plain (1), role-play (2), deep (3).
    wrap_levels: list[float] = Field(default_factory=lambda: [1 / 3, 1 / 3, 1 / 3])
    # Rows made from each behaviour, at distinct levels drawn from wrap_levels (3: plain, level 2 and level 3).
    wrap_variants: int = Field(default=1, ge=1, le=3)
    # Also use pyrit's jailbreak templates (fetched into the data cache) besides rapo_ray's own.
    wrap_pyrit: bool = True
    wrap_max_template_chars: int = Field(default=4000, ge=100)  # longer templates are not used
    shuffle: bool = True
    # Share of benign prompts (harmful_label 0) in every RL batch, e.g. 0.5; rounded to whole prompts of
    # rollout.prompts_per_step. None: batches are drawn from the shuffled rows, whatever their labels.
    # A schedule {steps done: share}, e.g. {0: 0.375, 16: 0.5}: 3 of 8 benign for the first 16 RL steps, then half
    # (the first key is 0); the pairs stage's batches use the share at step 0.
    benign_share: float | dict[int, float] | None = None

    @field_validator("benign_share")
    @classmethod
    def _check_share(cls, v: float | dict[int, float] | None) -> float | dict[int, float] | None:
        shares = v.values() if isinstance(v, dict) else [] if v is None else [v]
        if any(not 0.0 <= x <= 1.0 for x in shares):
            raise ValueError(f"benign_share {v}: every share must be within 0..1")
        if isinstance(v, dict) and (0 not in v or min(v) < 0):
            raise ValueError(f"benign_share schedule {v}: its first key must be step 0, and no key negative")
        return dict(sorted(v.items())) if isinstance(v, dict) else v

    def benign_schedule(self, batch_size: int) -> dict[int, int] | None:
        """Benign prompts in a batch of ``batch_size`` from each step on (None: not balanced)."""
        if self.benign_share is None:
            return None
        shares = self.benign_share if isinstance(self.benign_share, dict) else {0: self.benign_share}
        return {step: round(x * batch_size) for step, x in shares.items()}

    def benign_per_batch(self, batch_size: int) -> int | None:
        """Benign prompts in a batch of ``batch_size`` at step 0 (None: not balanced)."""
        schedule = self.benign_schedule(batch_size)
        return None if schedule is None else schedule[0]

    @field_validator("recipe", mode="before")
    @classmethod
    def _parse_recipe(cls, v: Any) -> Any:
        # Reference format: "stratasword:400,starbenign:400"
        if isinstance(v, str):
            out = []
            for part in filter(None, (p.strip() for p in v.split(","))):
                name, _, cap = part.partition(":")
                if cap and not cap.strip().isdigit():
                    raise ValueError(f"recipe entry '{part}': the cap after ':' must be a positive integer")
                out.append({"name": name.strip(), "cap": int(cap) if cap else None})
            return out
        return v

    @field_validator("wrap_levels")
    @classmethod
    def _check_mix(cls, v: list[float]) -> list[float]:
        if len(v) != 3 or any(x < 0 for x in v) or sum(v) <= 0:
            raise ValueError("wrap_levels must be 3 non-negative weights (levels 1, 2, 3) with a positive sum")
        return v

    @model_validator(mode="after")
    def _variants_fit(self) -> DataConfig:
        if self.wrap_variants > sum(1 for x in self.wrap_levels if x > 0):
            raise ValueError("wrap_variants exceeds the number of levels with a positive weight in wrap_levels")
        if self.eval_fraction + self.test_fraction >= 1.0:
            raise ValueError("eval_fraction + test_fraction must be below 1 (something must be left to train on)")
        return self
