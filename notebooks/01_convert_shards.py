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
# # 01 · Convert LLaVA records to WebDataset shards
#
# Turns a LLaVA-format JSON/JSONL file plus media folders into `{prefix}-%06d.tar` shards with
# `index.json` and `errors.jsonl` (format: `docs/data_format.md`), verifies them, shows what was
# rejected and why, and a few samples as the loader decodes them. Re-running with `RESUME = True`
# continues an interrupted conversion. Headless: `papermill 01_convert_shards.ipynb out.ipynb -p INPUT ...`.
#
# On a fresh checkout the default input (written by `make demo`) does not exist yet: the notebook then
# makes a small synthetic LLaVA sample in `SAMPLE_DIR` and converts that (`SAMPLE_DIR = None` stops
# with the command to run instead).

# %% tags=["parameters"]
# Parameters (papermill overrides these)
INPUT = ["../runs/demo/data/instruct.json"]  # one or more LLaVA JSON / JSONL files
MEDIA_ROOTS = ["../runs/demo/data"]  # media paths in the records are relative to these
OUTPUT_DIR = "../runs/demo/shards/instruct"
PREFIX = "shard"
SHARD_SIZE = 500
WORKERS = 2
VALIDATE_MEDIA = True
RESUME = True
N_SHOW = 8
SAMPLE_DIR = "../runs/sample"  # INPUT missing: a synthetic sample is made and converted here
SAMPLE_RECORDS = 200

# %%
# %matplotlib inline
import json
import os

import matplotlib.pyplot as plt
from IPython.display import display

from data_tools.convert_to_wds import convert
from llava_wb.data.config import DataConfig
from llava_wb.data.loader import build_loader
from llava_wb.data.pipeline import RawSample
from llava_wb.viz.data import plot_reasons, show_samples
from recipes.inputs import convert_inputs

given = convert_inputs(INPUT, MEDIA_ROOTS, OUTPUT_DIR, sample_dir=SAMPLE_DIR, sample_records=SAMPLE_RECORDS)
if given.note:
    print(given.note)
inputs, MEDIA_ROOTS, OUTPUT_DIR = given.inputs, given.media_roots, given.output_dir
summary = convert(
    inputs,
    MEDIA_ROOTS,
    OUTPUT_DIR,
    prefix=PREFIX,
    shard_size=SHARD_SIZE,
    workers=WORKERS,
    resume=RESUME,
    validate_media=VALIDATE_MEDIA,
    verify=True,
)
print(
    f"records {summary.records}  converted {summary.converted}  rejected {summary.rejected}  "
    f"shards {summary.shards}  bytes {summary.bytes:,}  rate {summary.records_per_second:,.0f} records/s"
)
print("by modality:", summary.by_modality, " fixes:", summary.fixes)
assert summary.converted + summary.rejected == summary.records

# %% [markdown]
# ## Rejected records, by reason (first lines of `errors.jsonl`)

# %%
plot_reasons(summary.rejected_by_reason)
plt.show()
with open(os.path.join(OUTPUT_DIR, "errors.jsonl"), encoding="utf-8") as f:
    for line, _ in zip(f, range(5)):
        print(line.rstrip())

# %% [markdown]
# ## A few samples, streamed back from the shards as the loader sees them

# %%
cfg = DataConfig.from_dict(
    {"sources": [OUTPUT_DIR], "batch_size": N_SHOW, "num_workers": 0, "epoch_mode": "exact", "batches_per_epoch": 1}
)
batch = next(iter(build_loader(cfg, process=RawSample())))
show_samples(batch["samples"], cfg.image)
plt.show()

# %%
metrics = {
    "records": summary.records,
    "converted": summary.converted,
    "rejected": summary.rejected,
    "rejected_by_reason": summary.rejected_by_reason,
    "shards": summary.shards,
    "bytes": summary.bytes,
    "records_per_second": summary.records_per_second,
    "verified": summary.verify.ok if summary.verify else None,
}
with open(os.path.join(OUTPUT_DIR, "convert_metrics.json"), "w") as f:
    json.dump(metrics, f, indent=1)
display(metrics)
