"""``rapo-ray pipeline CONFIG``: SFT data curation, SFT, (with ``pairs.in_pipeline``: preference pairs and DPO
from the SFT model,) online RAPO and evaluation from one config.

Each stage whose complete output exists is skipped: a curated folder marked complete, an exported SFT model, a
complete pairs folder, a DPO run that reached its steps, an RL run whose newest complete checkpoint reached
``train.total_steps`` (an RL run with an earlier checkpoint is resumed), an evaluation report folder holding its
``report.md``. The evaluation holds the models ``eval.stages`` names (base, SFT, DPO, RL; all by default).
"""
from __future__ import annotations

from pathlib import Path

from rapo_ray.checkpoint import CheckpointManager
from rapo_ray.config import JobConfig
from rapo_ray.dpo import cmd_dpo
from rapo_ray.driver import train
from rapo_ray.eval.runner import cmd_eval
from rapo_ray.runtime import init_ray
from rapo_ray.sft.curate import cmd_sft_data
from rapo_ray.sft.trainer import checkpoint_model_dir, cmd_sft


def rl_config(cfg: JobConfig, start: Path) -> JobConfig:
    """The job config of the RL stage: ``start`` (the SFT or the DPO model) as the starting policy."""
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"name_or_path": str(start)})})


def cmd_pipeline(cfg: JobConfig, address: str | None = None) -> Path:
    """Run every stage that is not complete yet; returns the evaluation report folder."""
    init_ray(address)
    cmd_sft_data(cfg)
    models = {"base": cfg.model.name_or_path, "sft": str(cmd_sft(cfg))}
    if cfg.pairs.in_pipeline:  # pairs.model unset: the pairs and DPO start from the complete SFT export
        models["dpo"] = str(checkpoint_model_dir(cmd_dpo(cfg, resume=True)))
    start = Path(models.get("dpo", models["sft"]))
    ckpts = CheckpointManager(cfg.output_dir, cfg.checkpoint.keep_last)
    latest = ckpts.latest()
    if latest is not None and CheckpointManager.load_state(latest)["step"] >= cfg.train.total_steps:
        print(f"rl: {latest} reached train.total_steps={cfg.train.total_steps}; skipped")
    else:
        train(rl_config(cfg, start), resume=latest is not None, address=address)
        latest = ckpts.latest()
    if latest is None:
        raise RuntimeError(f"the RL stage left no complete checkpoint under {cfg.output_dir}/checkpoints "
                           f"(set checkpoint.save_final: true)")
    report = Path(cfg.eval.report_dir or Path(cfg.output_dir) / "eval")
    if (report / "report.md").is_file():
        print(f"eval: {report} holds a report; skipped")
        return report
    models["rl"] = str(checkpoint_model_dir(latest))
    return cmd_eval(cfg, [models[s] for s in cfg.eval.stages if s in models], str(report))
