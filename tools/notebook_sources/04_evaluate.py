"""Source of notebooks/04_evaluate.ipynb: edit here, run `python tools/notebook_sources/04_evaluate.py`."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nbgen import write_notebook  # noqa: E402

write_notebook(os.path.join(ROOT, "notebooks", "04_evaluate.ipynb"), [
("md", """# 04 · Evaluate a trained model on held-out shards

Greedy answers for every question of the held-out shards (prompts built by the training
template code), exact match per question type beside the majority-class baseline, a few
examples, and `eval.json` / `eval.md` in `OUT_DIR`. Headless: `papermill 04_evaluate.ipynb out.ipynb -p MODEL_DIR ...`."""),
("params", """# Parameters (papermill overrides these)
MODEL_DIR = "../runs/demo/train/final"     # a folder written by save_bundle (model + tokenizer)
SHARDS = ["../runs/demo/shards/heldout"]
OUT_DIR = "../runs/demo/eval"
TEMPLATE = "vicuna_v1"
BATCH_SIZE = 64
MAX_NEW_TOKENS = 6
LIMIT = None                               # questions (None: all)
N_EXAMPLES = 12"""),
("code", """%matplotlib inline
import json, os
import matplotlib.pyplot as plt
from llava_wb.model.bundle import load_bundle
from llava_wb.eval.__main__ import image_config_for
from llava_wb.eval.evaluate import evaluate
from llava_wb.viz.train import plot_eval

model, tokenizer = load_bundle(MODEL_DIR)
result = evaluate(model, tokenizer, SHARDS, image=image_config_for(model), template=TEMPLATE,
                  batch_size=BATCH_SIZE, max_new_tokens=MAX_NEW_TOKENS, limit=LIMIT)
print(result.to_markdown())"""),
("code", """plot_eval(result.per_type); plt.show()"""),
("md", "## Examples (✓ correct, ✗ wrong)"),
("code", """for p in result.predictions[:N_EXAMPLES]:
    print(f"{'✓' if p['correct'] else '✗'} [{p['qtype']}] {p['question'][:70]!r} -> {p['prediction']!r} (answer {p['answer']!r})")"""),
("code", """os.makedirs(OUT_DIR, exist_ok=True)
result.save(os.path.join(OUT_DIR, "eval.json"))
with open(os.path.join(OUT_DIR, "eval.md"), "w") as f:
    f.write(result.to_markdown() + "\\n")
result.overall"""),
])
