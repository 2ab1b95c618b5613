"""``rapo-ray eval``: evaluate checkpoints side by side on the same prompts.

For each model in turn, one vLLM rollout actor (``RolloutWorker``) generates every task's completions with
fixed decoding (greedy by default); the actor is killed before the next model starts. Generations are cached
by (model fingerprint, prompt set, decoding settings) and scores by (generation, judge or grader settings), so
adding a model to an evaluation runs only that model. Safety completions are scored by the configured judge
pool and by a second refusal detector independent of the reward's; utility answers are executed (HumanEval) or
matched (GSM8K).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from tqdm import tqdm

from rapo_ray.config import JobConfig, RolloutSettings
from rapo_ray.data.split import origin
from rapo_ray.eval.cache import FileDigests, ResultCache, model_fingerprint, stable_hash
from rapo_ray.eval.keywords import keyword_refusal
from rapo_ray.eval.metrics import RateSpec, safety_metrics, utility_metrics
from rapo_ray.eval.report import PLOTS, write_report
from rapo_ray.eval.sets import read_sets, split_rows_of_sets
from rapo_ray.eval.utility import gsm8k_correct, load_gsm8k, load_humaneval, run_humaneval
from rapo_ray.hardware import resolve_for_role
from rapo_ray.judge.base import judge_identity
from rapo_ray.judge.pool import JudgePool
from rapo_ray.judge.reward import split_completion
from rapo_ray.models import cache_dir, conversation, resolve_model, thinking_prefix
from rapo_ray.placement import actor_options
from rapo_ray.rollout import RolloutWorker, sample_seed
from rapo_ray.runtime import init_ray
from rapo_ray.trackers import log_eval

GEN_BATCH = 128  # prompts per engine call (the progress bar moves between calls)
# Judge settings that do not change a judgement (resources, retries, caching); left out of the score key.
_JUDGE_RUNTIME_KEYS = {"num_actors", "cache", "cache_size", "max_retries", "max_restarts", "gpu_memory_utilization",
                       "enforce_eager", "kv_cache_gb", "tensor_parallel_size"}


class EvalError(RuntimeError):
    """An evaluation that cannot run (a model that fails to load or generate, no models)."""


@dataclass
class Task:
    """One prompt set evaluated on every model: ``safety``, ``humaneval`` or ``gsm8k``."""

    name: str
    rows: list[dict[str, Any]]
    max_tokens: int
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = stable_hash([self.name, [(r["id"], r["prompt"], r.get("harmful_label"), r.get("level"))
                                            + ((conversation(r),) if r.get("messages") or r.get("system") else ())
                                            for r in self.rows]])


def build_tasks(cfg: JobConfig) -> tuple[list[Task], dict[str, Any]]:
    """The safety prompt set (``eval.sets``: every row, or one split of them, ``rapo_ray.eval.sets``) and the
    utility tasks."""
    ev = cfg.eval
    if ev.split == "all":  # unset keys: readers keep their own columns
        safety, report = read_sets(cfg, [s.model_dump(exclude_unset=True) for s in ev.sets])
    else:
        safety, report = split_rows_of_sets(cfg, ev.split)
    tasks = [Task("safety", safety, ev.max_tokens)]
    if ev.humaneval:
        tasks.append(Task("humaneval", load_humaneval(ev.humaneval), ev.utility_max_tokens))
    if ev.gsm8k:
        tasks.append(Task("gsm8k", load_gsm8k(ev.gsm8k), ev.utility_max_tokens))
    return tasks, report


def decoding_settings(cfg: JobConfig, task: Task, dtype: str) -> dict[str, Any]:
    """Everything besides the model and the prompts that changes a generation (``dtype``: the engine dtype as
    resolved where the rollout runs, so ``auto`` on two CPU kinds gives two cache entries)."""
    ev, m = cfg.eval, cfg.model
    return {"temperature": ev.temperature, "top_p": ev.top_p, "max_tokens": task.max_tokens,
            "seed": ev.seed if ev.temperature > 0 else None, "max_model_len": ev.max_model_len,
            "dtype": dtype, "chat_template": m.chat_template, "think_open": m.think_open,
            "think_close": m.think_close}


def judge_settings(cfg: JobConfig) -> dict[str, Any]:
    # ``schedule`` is left out: evaluate() judges by its stage at train.total_steps, which holds none
    j = {k: v for k, v in cfg.judge.model_dump(mode="json").items() if k not in _JUDGE_RUNTIME_KEYS | {"schedule"}}
    return {"identity": judge_identity(cfg), "settings": j}


def model_labels(models: list[str], width: int = 40) -> list[str]:
    """Column names: each model as given, cut from the left to ``width`` characters; a model given twice is an
    error (it would be evaluated twice under one name)."""
    dupes = sorted({m for m in models if models.count(m) > 1})
    if dupes:
        raise EvalError(f"model given more than once: {dupes}")
    return [m if len(m) <= width else "..." + m[-(width - 3):] for m in models]


def visible_response(completion: str, truncated: bool, cfg: JobConfig) -> str:
    """What a user sees: the answer after the thinking block, or the whole output when the block never closed."""
    s = split_completion(completion, truncated, cfg.model.think_open, cfg.model.think_close)
    return s.answer if s.well_formed else s.thinking


def eval_engine_config(cfg: JobConfig) -> JobConfig:
    """The job config with the rollout engine set for evaluation (``eval.max_model_len``, ``eval.enforce_eager``)."""
    tree = cfg.model_dump(mode="json")
    tree["rollout"]["max_model_len"] = cfg.eval.max_model_len
    if cfg.eval.enforce_eager is not None:
        tree["rollout"]["enforce_eager"] = cfg.eval.enforce_eager
    return JobConfig.model_validate(tree)


class Generator:
    """One rollout actor over one model, started on first use and killed by ``close``."""

    def __init__(self, cfg: JobConfig, model_path: Path, label: str):
        self.cfg, self.model_path, self.label = cfg, model_path, label
        self.actor: Any = None

    def run(self, task: Task) -> list[dict[str, Any]]:
        ev = self.cfg.eval
        if self.actor is None:
            self.actor = self._start()
        out: list[dict[str, Any]] = []
        bar = tqdm(total=len(task.rows), desc=f"eval {self.label} {task.name}", unit="prompt")
        for i in range(0, len(task.rows), GEN_BATCH):
            rows = task.rows[i:i + GEN_BATCH]
            seeds = [sample_seed(ev.seed, 0, str(r["id"]), 0) for r in rows]
            try:
                res = ray.get(self.actor.complete.remote([conversation(r) for r in rows], task.max_tokens,
                                                         ev.temperature, ev.top_p, seeds))
            except ray.exceptions.RayError as e:
                raise EvalError(f"model {self.label} ({self.model_path}) failed to generate {task.name}: {e}") from e
            out += [{"id": r["id"], "text": o["text"], "finish_reason": o["finish_reason"],
                     "truncated": o["truncated"], "n_tokens": len(o["token_ids"])} for r, o in zip(rows, res)]
            bar.update(len(rows))
        bar.close()
        return out

    def _start(self) -> Any:
        opts = actor_options(self.cfg, "rollout")
        opts.update(max_restarts=0, max_task_retries=0)
        settings = RolloutSettings.of(self.cfg)
        actor = ray.remote(RolloutWorker).options(**opts).remote(settings, str(self.model_path), 0)
        try:
            ray.get(actor.info.remote())
        except ray.exceptions.RayError as e:
            ray.kill(actor)
            raise EvalError(f"model {self.label} ({self.model_path}) could not be loaded by vLLM: {e}") from e
        return actor

    def close(self) -> None:
        if self.actor is not None:
            ray.kill(self.actor)
            self.actor = None


class Scorer:
    """Safety judgements (judge pool, started on first use) and utility grading, both cached."""

    def __init__(self, cfg: JobConfig, cache: ResultCache):
        self.cfg, self.cache = cfg, cache
        self.pool: Any = None
        self.judge_key = stable_hash(judge_settings(cfg))

    def grader_key(self, task: Task) -> str:
        ev = self.cfg.eval
        if task.name == "safety":
            return self.judge_key
        if task.name == "humaneval":
            return stable_hash(["humaneval-sandbox-v1", ev.exec_timeout_s, ev.exec_memory_mb])
        return stable_hash(["gsm8k-exact-v1"])

    def score(self, task: Task, gens: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if task.name == "safety":
            return self._judge(task, gens)
        prefix = thinking_prefix(self.cfg.model)
        responses = [visible_response(prefix + g["text"], g["truncated"], self.cfg) for g in gens]
        if task.name == "humaneval":
            ev = self.cfg.eval
            results = run_humaneval(task.rows, responses, ev.exec_timeout_s, ev.exec_memory_mb, ev.exec_workers)
            return [{"correct": r.passed, "status": r.status, "stderr": r.stderr[-500:]} for r in results]
        return [{"correct": gsm8k_correct(resp, row["answer"])} for row, resp in zip(task.rows, responses)]

    def _judge(self, task: Task, gens: list[dict[str, Any]]) -> list[dict[str, Any]]:
        prefix = thinking_prefix(self.cfg.model)
        todo = [i for i, g in enumerate(gens) if g["finish_reason"] != "prompt_too_long"]
        rows = [{"prompt": task.rows[i]["prompt"], "completion": prefix + gens[i]["text"],
                 "harmful_label": task.rows[i]["harmful_label"], "level": task.rows[i]["level"],
                 "truncated": gens[i]["truncated"], "id": task.rows[i]["id"], "source": task.rows[i]["source"]}
                for i in todo]
        if self.pool is None and rows:
            self.pool = JudgePool(self.cfg)
        judged = self.pool.score(rows) if rows else []
        out: list[dict[str, Any]] = [{"judge": None} for _ in gens]
        for i, b in zip(todo, judged):
            out[i] = {"judge": b.to_dict()}
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def _records(task: Task, gens: list[dict[str, Any]], scores: list[dict[str, Any]], cfg: JobConfig) -> list[dict]:
    """One record per prompt: row, generation, scores, and phrase-matched refusal (safety)."""
    prefix = thinking_prefix(cfg.model)
    out = []
    for row, g, s in zip(task.rows, gens, scores):
        completion = prefix + g["text"]
        skipped = g["finish_reason"] == "prompt_too_long"
        split = split_completion(completion, g["truncated"], cfg.model.think_open, cfg.model.think_close)
        rec = {"task": task.name, "id": row["id"], "prompt": row["prompt"], "completion": completion,
               "finish_reason": g["finish_reason"], "truncated": g["truncated"], "n_tokens": g["n_tokens"],
               "skipped": skipped, "well_formed": split.well_formed, **s}
        if task.name == "safety":
            rec.update(source=row["source"], harmful_label=row["harmful_label"], level=row["level"],
                       origin=origin(row),
                       phrase_refused=keyword_refusal(visible_response(completion, g["truncated"], cfg)))
        out.append(rec)
    return out


def evaluate(cfg: JobConfig, models: list[str]) -> dict[str, Any]:
    """Generate, score and measure every model; returns the report payload (see ``report.write_report``). The judge
    is ``judge.schedule``'s stage at ``train.total_steps``: the one the RL model was last trained under."""
    if not models:
        raise EvalError("no model to evaluate: give at least one --model PATH")
    cfg = cfg.at_step(cfg.train.total_steps)
    ev = cfg.eval
    root = Path(ev.cache_dir).expanduser() if ev.cache_dir else cache_dir() / "eval"
    cache = ResultCache(root)
    digests = FileDigests(root / "file_digests.json")
    paths = [resolve_model(m) for m in models]
    fingerprints = [model_fingerprint(p, digests) for p in paths]
    tasks, data_report = build_tasks(cfg)
    engine_cfg = eval_engine_config(cfg)
    dtype = resolve_for_role(engine_cfg, "rollout")["value"]
    rs = RateSpec(ev.confidence, ev.interval, ev.bootstrap_samples, ev.seed)
    scorer = Scorer(cfg, cache)
    payload: dict[str, Any] = {"models": {}, "data": data_report,
                               "settings": {"eval": ev.model_dump(mode="json"), "judge": judge_settings(cfg),
                                            "decoding": {t.name: decoding_settings(cfg, t, dtype) for t in tasks},
                                            "tasks": {t.name: {"n": len(t.rows), "key": t.key} for t in tasks}}}
    try:
        for label, path, fp in zip(model_labels(models), paths, fingerprints):
            gen = Generator(engine_cfg, path, label)
            status: dict[str, dict[str, str]] = {}
            gens: dict[str, list[dict[str, Any]]] = {}
            gkeys = {t.name: stable_hash([fp, t.key, decoding_settings(cfg, t, dtype)]) for t in tasks}
            try:  # every generation first, so the engine is gone before a judge engine needs the device
                for task in tasks:
                    cached = cache.get("generations", gkeys[task.name])
                    status[task.name] = {"generation": "hit" if cached is not None else "miss"}
                    if cached is None:
                        cached = gen.run(task)
                        cache.put("generations", gkeys[task.name], cached)
                    gens[task.name] = cached
            finally:
                gen.close()
            records: dict[str, list[dict[str, Any]]] = {}
            for task in tasks:
                skey = stable_hash([gkeys[task.name], scorer.grader_key(task)])
                scores = cache.get("scores", skey)
                status[task.name]["scores"] = "hit" if scores is not None else "miss"
                if scores is None:
                    scores = scorer.score(task, gens[task.name])
                    cache.put("scores", skey, scores)
                records[task.name] = _records(task, gens[task.name], scores, cfg)
            util = [r for t in tasks if t.name != "safety" for r in records[t.name]]
            payload["models"][label] = {
                "path": str(path), "fingerprint": fp, "cache": status,
                "safety": safety_metrics(records["safety"], rs), "utility": utility_metrics(util, rs),
                "records": records}
    finally:
        scorer.close()
    payload["file_digests_computed"] = digests.hashed
    return payload


def cmd_eval(cfg: JobConfig, models: list[str], out_dir: str | None = None) -> Path:
    """``rapo-ray eval CONFIG --model PATH ...``: evaluate, write the report folder, return its path."""
    out = Path(out_dir or cfg.eval.report_dir or Path(cfg.output_dir) / "eval")
    init_ray()
    payload = evaluate(cfg, models)
    files = write_report(out, payload)
    log_eval(cfg, out, payload, {name: files[name] for name in PLOTS if files.get(name)})
    print(f"eval report: {out}")
    print(json.dumps({label: m["cache"] for label, m in payload["models"].items()}))
    return out
