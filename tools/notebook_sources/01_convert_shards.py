"""Source of notebooks/01_convert_shards.ipynb: edit here, run `python tools/notebook_sources/01_convert_shards.py`."""
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nbgen import write_notebook
write_notebook(os.path.join(ROOT, "notebooks", "01_convert_shards.ipynb"), [
("md", """# 01 · Convert LLaVA records to WebDataset shards

Turns a LLaVA-format JSON/JSONL file plus media folders into `{prefix}-%06d.tar` shards with
`index.json` and `errors.jsonl` (format: `docs/data_format.md`), verifies them, shows what was
rejected and why, and a few samples as the loader decodes them. Re-running with `RESUME = True`
continues an interrupted conversion. Headless: `papermill 01_convert_shards.ipynb out.ipynb -p INPUT ...`."""),
("params", """# Parameters (papermill overrides these)
INPUT = ["../runs/demo/data/instruct.json"]  # one or more LLaVA JSON / JSONL files
MEDIA_ROOTS = ["../runs/demo/data"]          # media paths in the records are relative to these
OUTPUT_DIR = "../runs/demo/shards/instruct"
PREFIX = "shard"
SHARD_SIZE = 500
WORKERS = 2
VALIDATE_MEDIA = True
RESUME = True
N_SHOW = 8"""),
("code", """%matplotlib inline
import json, os
import matplotlib.pyplot as plt
from data_tools.convert_to_wds import convert
from llava_wb.data.config import DataConfig
from llava_wb.data.loader import build_loader
from llava_wb.data.pipeline import RawSample
from llava_wb.viz.data import plot_reasons, show_samples

inputs = [INPUT] if isinstance(INPUT, str) else list(INPUT)
summary = convert(inputs, MEDIA_ROOTS, OUTPUT_DIR, prefix=PREFIX, shard_size=SHARD_SIZE, workers=WORKERS,
                  resume=RESUME, validate_media=VALIDATE_MEDIA, verify=True)
print(f"records {summary.records}  converted {summary.converted}  rejected {summary.rejected}  "
      f"shards {summary.shards}  bytes {summary.bytes:,}  rate {summary.records_per_second:,.0f} records/s")
print("by modality:", summary.by_modality, " fixes:", summary.fixes)
assert summary.converted + summary.rejected == summary.records"""),
("md", "## Rejected records, by reason (first lines of `errors.jsonl`)"),
("code", """plot_reasons(summary.rejected_by_reason); plt.show()
with open(os.path.join(OUTPUT_DIR, "errors.jsonl"), encoding="utf-8") as f:
    for line, _ in zip(f, range(5)):
        print(line.rstrip())"""),
("md", "## A few samples, streamed back from the shards as the loader sees them"),
("code", """cfg = DataConfig.from_dict({"sources": [OUTPUT_DIR], "batch_size": N_SHOW, "num_workers": 0,
                            "epoch_mode": "exact", "batches_per_epoch": 1})
batch = next(iter(build_loader(cfg, process=RawSample())))
show_samples(batch["samples"], cfg.image); plt.show()"""),
("code", """metrics = {"records": summary.records, "converted": summary.converted, "rejected": summary.rejected,
           "rejected_by_reason": summary.rejected_by_reason, "shards": summary.shards, "bytes": summary.bytes,
           "records_per_second": summary.records_per_second, "verified": summary.verify.ok if summary.verify else None}
with open(os.path.join(OUTPUT_DIR, "convert_metrics.json"), "w") as f:
    json.dump(metrics, f, indent=1)
metrics"""),
])
