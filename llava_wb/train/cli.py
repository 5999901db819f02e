"""Command line: ``python -m llava_wb.train CONFIG [dotted.key=value ...]``.

One entry point for every launcher:

    python -m llava_wb.train configs/demo.yaml train.max_steps=50          # one process
    torchrun --nproc_per_node 2 -m llava_wb.train configs/demo.yaml        # DDP (gloo on CPU)
    deepspeed --num_gpus 2 --module llava_wb.train configs/demo.yaml \\
        train.deepspeed=configs/deepspeed/zero2.json                      # DeepSpeed launcher

The deepspeed launcher appends ``--local_rank=N``; it is accepted and ignored (ranks come from the
environment). ``--check`` validates the config and prints the resolved YAML without training.
Exit status: 0 done, 2 bad config (the message names the field), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import yaml

DESCRIPTION = """\
Train a llava_wb model: one process, or under torchrun / the deepspeed launcher.

  python -m llava_wb.train configs/demo.yaml train.max_steps=50
  torchrun --nproc_per_node 2 -m llava_wb.train configs/demo.yaml
  deepspeed --num_gpus 2 --module llava_wb.train configs/demo.yaml train.deepspeed=configs/deepspeed/zero2.json

On CPU the processes talk over gloo; the deepspeed launcher also works without GPUs (its
--num_gpus is then the number of processes). Exit status: 0 done, 2 bad config, 1 other errors.
"""

EPILOG = """\
overrides (dotted keys, YAML values):
  train.max_steps=20  data.batch_size=4  train.resume=true  train.output_dir=runs/x
  model.llm.config.num_hidden_layers=2  data.sources=[runs/demo/shards/instruct]
  train.stage=pretrain|finetune  train.lora.enabled=true  train.trainable.tower=true
  train.deepspeed=configs/deepspeed/zero2.json  train.init_from=runs/stage1
${VAR} and ${VAR:-default} in the YAML expand from the environment.

resume after a crash or kill: run the same command with train.resume=true.
files in train.output_dir: resolved_config.yaml, metrics.jsonl, tensorboard/, checkpoint-N/
(model, optimizer, scheduler, RNG, loader_state_rank*.json), final/ (model + tokenizer), result.json.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m llava_wb.train",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML run config (sections model, data, train; optional tokenizer)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.max_steps=20")
    p.add_argument("--check", action="store_true", help="validate and print the resolved config, do not train")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from llava_wb.train.checkpoints import CheckpointError
    from llava_wb.train.checks import check_run_config
    from llava_wb.train.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
        if args.check:
            facts = check_run_config(cfg)
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            print(
                f"# ok: tokens_per_image={facts.tokens_per_image} image_size={facts.image_size} "
                f"media_tokens={facts.media_tokens}"
            )
            return 0
        from llava_wb.train.run import train

        if args.quiet:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        result = train(cfg)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except CheckpointError as exc:  # no checkpoint verifies, or the disk filled while saving one
        print(f"checkpoint error: {exc}", file=sys.stderr)
        return 3
    if result["world_size"] == 1 or _rank() == 0:
        print(json.dumps(result, indent=1))
    return 0


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))
