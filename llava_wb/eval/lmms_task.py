"""``python -m llava_wb.eval.lmms_task SHARDS... --out TASK_DIR``: a local lmms-eval task from held-out shards.

Writes ``TASK_DIR/questions.jsonl`` (one document per assistant turn, the same questions, prompts
and question types as llava_wb's evaluator: ``split_for_eval`` and the record's ``meta.qtypes``),
``TASK_DIR/media/`` (each media item's bytes exactly as in the shard) and the task files of
``llava_wb/eval/lmms_tasks/`` (``llava_wb_heldout.yaml``, ``utils.py``), the yaml pointing at the
absolute ``questions.jsonl`` and listing one ``acc_<type>`` metric per question type found. No hub,
no network: ``lmms-eval ... --tasks llava_wb_heldout --include_path TASK_DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..data.config import SourceConfig
from ..data.conversation import split_for_eval
from ..data.decode import media_fields, parse_json
from ..data.sources import resolve
from ..data.tario import iter_shard

TEMPLATES = Path(__file__).with_name("lmms_tasks")
TASK = "llava_wb_heldout"


def write_task(shards: Sequence[str], out_dir: str | os.PathLike, *, limit: int | None = None) -> dict[str, int]:
    """Write the task folder; returns the number of questions per type."""
    out = Path(out_dir).resolve()
    (out / "media").mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    n = 0
    with open(out / "questions.jsonl", "w", encoding="utf-8") as f:
        for source in shards:
            for url in resolve(SourceConfig(path=source)).urls:
                for raw in iter_shard(url):
                    record = parse_json(raw)
                    media = []
                    for modality, field in media_fields(raw, record):
                        path = out / "media" / f"{raw['__key__']}.{field}"
                        path.write_bytes(raw[field])
                        media.append({"modality": modality, "path": str(path)})
                    qtypes = (record.get("meta") or {}).get("qtypes") or []
                    for item in split_for_eval(record["conversations"]):
                        qtype = qtypes[item.turn] if item.turn < len(qtypes) else "all"
                        doc = {
                            "question_id": f"{raw['__key__']}/{item.turn}",
                            "id": str(record.get("id", "")),
                            "turn": item.turn,
                            "qtype": qtype,
                            "question": item.prompt[-1]["value"],
                            "answer": item.answer,
                            "llava_wb_conversation": item.prompt,
                            "media": media,
                        }
                        f.write(json.dumps(doc, ensure_ascii=False) + "\n")
                        counts[qtype] = counts.get(qtype, 0) + 1
                        n += 1
                        if limit is not None and n >= limit:
                            break
                    if limit is not None and n >= limit:
                        break
                if limit is not None and n >= limit:
                    break
    yaml_text = (TEMPLATES / f"{TASK}.yaml").read_text(encoding="utf-8")
    yaml_text = yaml_text.replace("    test: questions.jsonl", f"    test: {json.dumps(str(out / 'questions.jsonl'))}")
    yaml_text += "".join(
        f"  - metric: acc_{q}\n    aggregation: mean\n    higher_is_better: true\n" for q in sorted(counts)
    )
    (out / f"{TASK}.yaml").write_text(yaml_text, encoding="utf-8")
    shutil.copyfile(TEMPLATES / "utils.py", out / "utils.py")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m llava_wb.eval.lmms_task",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("shards", nargs="+", help="held-out shard folder(s), globs or URLs")
    p.add_argument("--out", required=True, help="task folder to write (give it to lmms-eval as --include_path)")
    p.add_argument("--limit", type=int, default=None, help="stop after this many questions")
    args = p.parse_args(argv)
    counts = write_task(args.shards, args.out, limit=args.limit)
    print(
        f"wrote {sum(counts.values())} questions ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}) "
        f"to {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
