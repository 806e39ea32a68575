"""`train.py export`: a checkpoint as a standard PEFT adapter folder, or merged into the base model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from entry_point import OneLineParser
from trainer.config import ExperimentConfig


def export_main(argv: list[str]) -> int:
    """`train.py export --experiment-name NAME --checkpoint STEP --out DIR [--merge]`: a standard PEFT adapter."""
    parser = OneLineParser(prog="train.py export", description=export_main.__doc__)
    parser.add_argument("--experiment-name", required=True)
    parser.add_argument("--model-name", default=None)
    parser.add_argument("--project", default=ExperimentConfig.project)
    parser.add_argument("--art-path", default=".art")
    parser.add_argument("--checkpoint", type=int, default=None, help="step to export (default: the latest)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--merge", action="store_true", help="write the merged full model (base + adapter)")
    args = parser.parse_args(argv)
    from backends.checkpoints import export_adapter

    model_dir = Path(args.art_path) / args.project / "models" / (args.model_name or args.experiment_name)
    steps = sorted(int(p.name) for p in (model_dir / "checkpoints").glob("[0-9]*") if p.name.isdigit())
    if not steps:
        print(f"error: --experiment-name: no checkpoints under {model_dir}", file=sys.stderr)
        return 2
    step = steps[-1] if args.checkpoint is None else args.checkpoint
    if step not in steps:
        print(f"error: --checkpoint {step}: not among the kept steps {steps}", file=sys.stderr)
        return 2
    base_model = json.loads((model_dir / "model.json").read_text())["base_model"]
    out = export_adapter(model_dir / "checkpoints" / f"{step:04d}", Path(args.out), args.merge, base_model)
    print(f"exported step {step} {'merged model' if args.merge else 'adapter'} to {out}")
    return 0
