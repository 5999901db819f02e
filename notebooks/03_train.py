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
# # 03 · Train
#
# Trains a llava_wb model from a YAML config plus dotted overrides: in this kernel for one process,
# or through `torchrun` / the `deepspeed` launcher for more. Then plots loss and throughput,
# evaluates the final model on held-out shards and writes `metrics.json` into the run folder.
# The same notebook runs every stage: `demo_tower.yaml` and `demo_audio.yaml` (the towers' warm-ups),
# `demo_pretrain.yaml`, `demo.yaml` (the instruction-tuned model that `make demo` evaluates).
# All training logic lives in `llava_wb.train`; this notebook only calls it.
# Headless on a GPU node: `papermill 03_train.ipynb out.ipynb -p CONFIG ../configs/x.yaml -p NPROC 8`.
# The default config trains the demo's last stage from what `make demo` writes in `runs/demo`
# (tokenizer, shards, tower, stage 1): on a fresh checkout run `make demo` first, or set CONFIG.

# %% tags=["parameters"]
# Parameters (papermill overrides these)
CONFIG = "../configs/demo.yaml"
# dotted overrides, e.g. ["train.max_steps=50", "data.batch_size=8"] (on its own line: papermill
# cannot parse a parameter line with a second "=")
OVERRIDES = []
NPROC = 1  # processes; 1 trains in this kernel
LAUNCHER = "torchrun"  # torchrun | deepspeed (used when NPROC > 1)
EVAL_SHARDS = ["../runs/demo/shards/heldout"]  # [] skips the evaluation
EVAL_LIMIT = None  # questions (None: all)
EVAL_BATCH_SIZE = 64

# %%
# %matplotlib inline
import json
import os

import matplotlib.pyplot as plt
from IPython.display import display

from llava_wb.train import load_config, train
from llava_wb.train.launch import launch
from llava_wb.viz.train import plot_eval, plot_training, read_metrics

cfg = load_config(CONFIG, OVERRIDES)
out = cfg.train.output_dir
print("run folder:", out)
if NPROC == 1:
    result = train(cfg)
else:
    result = launch(CONFIG, OVERRIDES, nproc=NPROC, launcher=LAUNCHER)
display(result)

# %% [markdown]
# ## Loss, learning rate and throughput

# %%
rows = read_metrics(os.path.join(out, "metrics.jsonl"))
plot_training(rows)
plt.savefig(os.path.join(out, "training.png"), dpi=100)
plt.show()

# %% [markdown]
# ## Evaluation
# Language-model stages: held-out exact match per question type beside the majority baseline.
# The warm-up stages (vision and audio tower): per-head accuracy on object patches or event tokens.

# %%
ev = None
if result.get("stage") in ("tower_warmup", "audio_warmup"):
    from llava_wb.train.warmup_loop import accuracy_table

    print(accuracy_table(result))
elif EVAL_SHARDS:
    from llava_wb.eval.evaluate import evaluate, image_config_for
    from llava_wb.model.bundle import load_bundle

    model, tokenizer = load_bundle(os.path.join(out, "final"))
    ev = evaluate(
        model,
        tokenizer,
        EVAL_SHARDS,
        image=image_config_for(model, cfg.data.image.aspect),
        template=cfg.data.template,
        batch_size=EVAL_BATCH_SIZE,
        limit=EVAL_LIMIT,
    )
    print(ev.to_markdown())
    plot_eval(ev.per_type)
    plt.savefig(os.path.join(out, "eval.png"), dpi=100)
    plt.show()

# %%
metrics = {"train": result, "eval": None if ev is None else {"overall": ev.overall, "per_type": ev.per_type}}
with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump(metrics, f, indent=1, default=str)
if ev is not None:
    ev.save(os.path.join(out, "eval.json"))
metrics["eval"]
