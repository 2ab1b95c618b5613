"""`rapo-ray pipeline` commands (the pipeline itself runs end to end, then again skipping every stage, in
test_safety_recipe.py)."""
from __future__ import annotations

from rapo_ray.cli import build_parser


def test_cli_knows_the_sft_commands():
    ap = build_parser()
    assert ap.parse_args(["sft-data", "c.yaml"]).fn.__name__ == "cmd_sft_data"
    args = ap.parse_args(["sft", "c.yaml", "--resume", "--set", "sft.epochs=3"])
    assert args.fn.__name__ == "cmd_sft" and args.resume and args.overrides == ["sft.epochs=3"]
    assert ap.parse_args(["pipeline", "c.yaml", "--address", "auto"]).address == "auto"
