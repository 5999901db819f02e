# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Evaluate a trained model on held-out shards
#
# Greedy answers for every question of the held-out shards (prompts built by the training
# template code), exact match per question type beside the majority-class baseline, a few
# examples, and `eval.json` / `eval.md` in `OUT_DIR`. Headless: `papermill 04_evaluate.ipynb out.ipynb -p MODEL_DIR ...`.
#
# Needs a trained model and held-out shards: `make demo` writes both under `runs/demo` (the defaults);
# without them the first cell stops and says what to run.

# %% tags=["parameters"]
# Parameters (papermill overrides these)
MODEL_DIR = "../runs/demo/train/final"  # a folder written by save_bundle (model + tokenizer)
SHARDS = ["../runs/demo/shards/heldout"]
OUT_DIR = "../runs/demo/eval"
TEMPLATE = "vicuna_v1"
BATCH_SIZE = 64
MAX_NEW_TOKENS = 6
LIMIT = None  # questions (None: all)
N_EXAMPLES = 12

# %%
# %matplotlib inline
import os

import matplotlib.pyplot as plt
from IPython.display import display

from llava_wb.eval.evaluate import evaluate, image_config_for
from llava_wb.model.bundle import load_bundle
from llava_wb.viz.train import plot_eval
from recipes.inputs import require_model, require_shards

model, tokenizer = load_bundle(require_model(MODEL_DIR))
SHARDS = require_shards(SHARDS)
result = evaluate(
    model,
    tokenizer,
    SHARDS,
    image=image_config_for(model),
    template=TEMPLATE,
    batch_size=BATCH_SIZE,
    max_new_tokens=MAX_NEW_TOKENS,
    limit=LIMIT,
)
print(result.to_markdown())

# %%
plot_eval(result.per_type)
plt.show()

# %% [markdown]
# ## Examples (✓ correct, ✗ wrong)

# %%
for p in result.predictions[:N_EXAMPLES]:
    print(
        f"{'✓' if p['correct'] else '✗'} [{p['qtype']}] {p['question'][:70]!r} -> {p['prediction']!r} (answer {p['answer']!r})"
    )

# %%
os.makedirs(OUT_DIR, exist_ok=True)
result.save(os.path.join(OUT_DIR, "eval.json"))
with open(os.path.join(OUT_DIR, "eval.md"), "w") as f:
    f.write(result.to_markdown() + "\n")
display(result.overall)
