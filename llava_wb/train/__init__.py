"""Training package: typed run configs, stages, the HF Trainer on the streaming loader.

Use from Python (one process, e.g. a notebook)::

    from llava_wb.train import load_config, train
    result = train(load_config("configs/demo.yaml", ["train.max_steps=20"]))

or from the shell: ``python -m llava_wb.train CONFIG [dotted.key=value ...]`` (also under
``torchrun`` and the ``deepspeed`` launcher). Modules: ``config`` (pydantic sections, YAML, overrides),
``checks`` (validation before any work), ``stages`` (what trains, LoRA, learning-rate groups),
``trainer`` (the HF Trainer bent to the streaming loader, logging callbacks), ``checkpoints``
(loader position, completeness marker, rotation), ``run`` (``train``), ``cli``.
Importing this package is cheap; torch loads on first use of ``train``.
"""

from __future__ import annotations

from typing import Any

from llava_wb.train.config import ConfigError, LoraConfig, RunConfig, TrainableConfig, TrainConfig, load_config

__all__ = ["ConfigError", "LoraConfig", "RunConfig", "TrainConfig", "TrainableConfig", "load_config", "train"]


def train(cfg: RunConfig) -> dict[str, Any]:
    """Run training as ``cfg`` says and return the result summary (see ``llava_wb.train.run``)."""
    from llava_wb.train.run import train as _train

    return _train(cfg)
