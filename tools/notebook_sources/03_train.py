"""Source of notebooks/03_train.ipynb: edit here, run `python tools/notebook_sources/03_train.py`."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nbgen import write_notebook  # noqa: E402

write_notebook(os.path.join(ROOT, "notebooks", "03_train.ipynb"), [
("md", """# 03 · Train

Trains a llava_wb model from a YAML config plus dotted overrides: in this kernel for one process,
or through `torchrun` / the `deepspeed` launcher for more. Then plots loss and throughput,
evaluates the final model on held-out shards and writes `metrics.json` into the run folder.
The same notebook runs every stage: `demo_tower.yaml` (tower warm-up), `demo_pretrain.yaml`,
`demo.yaml` (the instruction-tuned model that `make demo` evaluates).
All training logic lives in `llava_wb.train`; this notebook only calls it.
Headless on a GPU node: `papermill 03_train.ipynb out.ipynb -p CONFIG ../configs/x.yaml -p NPROC 8`."""),
("params", """# Parameters (papermill overrides these)
CONFIG = "../configs/demo.yaml"
# dotted overrides, e.g. ["train.max_steps=50", "data.batch_size=8"] (on its own line: papermill
# cannot parse a parameter line with a second "=")
OVERRIDES = []
NPROC = 1                            # processes; 1 trains in this kernel
LAUNCHER = "torchrun"                # torchrun | deepspeed (used when NPROC > 1)
EVAL_SHARDS = ["../runs/demo/shards/heldout"]  # [] skips the evaluation
EVAL_LIMIT = None                    # questions (None: all)
EVAL_BATCH_SIZE = 64"""),
("code", """%matplotlib inline
import json, os
import matplotlib.pyplot as plt
from llava_wb.train import load_config, train
from llava_wb.train.launch import launch
from llava_wb.viz.train import plot_training, plot_eval, read_metrics

cfg = load_config(CONFIG, OVERRIDES)
out = cfg.train.output_dir
print("run folder:", out)
if NPROC == 1:
    result = train(cfg)
else:
    result = launch(CONFIG, OVERRIDES, nproc=NPROC, launcher=LAUNCHER)
result"""),
("md", "## Loss, learning rate and throughput"),
("code", """rows = read_metrics(os.path.join(out, "metrics.jsonl"))
plot_training(rows); plt.savefig(os.path.join(out, "training.png"), dpi=100); plt.show()"""),
("md", """## Evaluation
Language-model stages: held-out exact match per question type beside the majority baseline.
The tower warm-up stage: per-patch accuracy of its heads on object patches."""),
("code", """ev = None
if result.get("stage") == "tower_warmup":
    from llava_wb.train.warmup import patch_accuracy_table
    print(patch_accuracy_table(result))
elif EVAL_SHARDS:
    from llava_wb.eval.__main__ import image_config_for
    from llava_wb.eval.evaluate import evaluate
    from llava_wb.model.bundle import load_bundle

    model, tokenizer = load_bundle(os.path.join(out, "final"))
    ev = evaluate(model, tokenizer, EVAL_SHARDS, image=image_config_for(model, cfg.data.image.aspect),
                  template=cfg.data.template, batch_size=EVAL_BATCH_SIZE, limit=EVAL_LIMIT)
    print(ev.to_markdown())
    plot_eval(ev.per_type); plt.savefig(os.path.join(out, "eval.png"), dpi=100); plt.show()"""),
("code", """metrics = {"train": result, "eval": None if ev is None else {"overall": ev.overall, "per_type": ev.per_type}}
with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump(metrics, f, indent=1, default=str)
if ev is not None:
    ev.save(os.path.join(out, "eval.json"))
metrics["eval"]"""),
])
