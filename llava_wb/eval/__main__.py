"""``python -m llava_wb.eval MODEL_DIR SHARDS [SHARDS ...] --out DIR``: score a saved model on held-out shards.

Writes ``eval.json`` (overall, per type, majority baseline, examples) and ``eval.md`` (the table).
"""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llava_wb.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="folder written by save_bundle (model + tokenizer)")
    p.add_argument("shards", nargs="+", help="shard folder(s), globs or URLs (held-out split)")
    p.add_argument("--out", default=None, help="where eval.json / eval.md go (default: MODEL/eval)")
    p.add_argument("--template", default="vicuna_v1")
    p.add_argument("--aspect", default="pad", choices=["pad", "resize"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--limit", type=int, default=None, help="stop after this many questions")
    args = p.parse_args(argv)

    from ..model.bundle import load_bundle
    from .evaluate import evaluate, image_config_for

    model, tok = load_bundle(args.model)
    result = evaluate(model, tok, args.shards, image=image_config_for(model, args.aspect), template=args.template,
                      max_length=args.max_length, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                      limit=args.limit)
    out = args.out or os.path.join(args.model, "eval")
    os.makedirs(out, exist_ok=True)
    result.save(os.path.join(out, "eval.json"))
    with open(os.path.join(out, "eval.md"), "w") as f:
        f.write(result.to_markdown() + "\n")
    print(result.to_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
