"""``python -m llava_wb.eval MODEL_DIR SHARDS [SHARDS ...] --out DIR``: score a saved model on held-out shards.

Writes ``eval.json`` (overall, per type, majority baseline, examples) and ``eval.md`` (the table).

``python -m llava_wb.eval MODEL_DIR --question-file Q.jsonl --image-folder IMAGES --answers-file A.jsonl``
answers a LLaVA question file (``question_id``, ``image``, ``text``, ``category`` per line) and writes
LLaVA's answer file (``question_id``, ``prompt``, ``text``, ``answer_id``, ``model_id``, ``metadata``),
ready for LLaVA's own scoring scripts (see docs/eval.md).
"""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m llava_wb.eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model", help="folder written by save_bundle (model + tokenizer)")
    p.add_argument("shards", nargs="*", help="shard folder(s), globs or URLs (held-out split)")
    p.add_argument("--question-file", default=None, help="a LLaVA question file (JSONL) to answer instead of shards")
    p.add_argument("--image-folder", default=None, help="folder the question file's image paths are relative to")
    p.add_argument(
        "--answers-file", default=None, help="where LLaVA's answer file goes (default: MODEL/eval/answers.jsonl)"
    )
    p.add_argument("--model-id", default=None, help="the answers' model_id (default: the model folder's name)")
    p.add_argument("--out", default=None, help="where eval.json / eval.md go (default: MODEL/eval)")
    p.add_argument("--template", default="vicuna_v1")
    p.add_argument("--aspect", default="pad", choices=["pad", "resize"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: 8 for shards, 128 for a question file")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--limit", type=int, default=None, help="stop after this many questions")
    args = p.parse_args(argv)
    if bool(args.shards) == bool(args.question_file):
        p.error("give held-out shards or --question-file (one of them)")

    from ..model.bundle import load_bundle
    from .evaluate import evaluate, image_config_for

    model, tok = load_bundle(args.model)
    if args.question_file:
        from .llava_questions import answer_questions, write_answers

        answers = answer_questions(
            model,
            tok,
            args.question_file,
            args.image_folder,
            image=image_config_for(model, args.aspect),
            template=args.template,
            model_id=args.model_id or os.path.basename(os.path.normpath(args.model)),
            max_new_tokens=args.max_new_tokens or 128,
            max_length=args.max_length,
            batch_size=args.batch_size,
        )
        path = write_answers(args.answers_file or os.path.join(args.model, "eval", "answers.jsonl"), answers)
        print(f"wrote {len(answers)} answers to {path}")
        return 0
    result = evaluate(
        model,
        tok,
        args.shards,
        image=image_config_for(model, args.aspect),
        template=args.template,
        max_length=args.max_length,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens or 8,
        limit=args.limit,
    )
    out = args.out or os.path.join(args.model, "eval")
    os.makedirs(out, exist_ok=True)
    result.save(os.path.join(out, "eval.json"))
    with open(os.path.join(out, "eval.md"), "w") as f:
        f.write(result.to_markdown() + "\n")
    print(result.to_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
