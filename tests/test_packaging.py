"""Packaging: environment.yml mirrors pyproject.toml; the library imports without the training stack."""

from __future__ import annotations

import os
import subprocess
import sys

import tomllib
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_environment_yml_pip_section_matches_pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    want = list(project["dependencies"])
    extras = project["optional-dependencies"]
    (in_all,) = extras["all"]  # "llava_wb[train,media,...]": the extras `make venv` installs
    for extra in in_all.split("[", 1)[1].rstrip("]").split(","):
        want += extras[extra]
    with open(os.path.join(ROOT, "environment.yml")) as f:
        env = yaml.safe_load(f)
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert sorted(pip) == sorted(want)
    assert "python=3.11" in env["dependencies"]


def test_library_imports_without_torch_or_transformers():
    code = (
        "import sys, llava_wb, llava_wb.data, llava_wb.data.config, llava_wb.data.sources, "
        "llava_wb.registry, llava_wb.data.conversation; "
        "heavy = [m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# One process loads torch and transformers (third-party: nothing of llava_wb), then forks a child per
# module that imports it first: the same check as a fresh interpreter per module, without paying
# torch's and transformers' import (about 2.9 s) 17 times (48 s -> about 8 s on 2 cores).
_IMPORT_EACH_FIRST = """
import importlib, os, sys
import torch, transformers, transformers.modeling_utils
assert not [m for m in sys.modules if m.startswith("llava_wb")], "the parent must not import llava_wb"
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException as e:
            print(f"{name}: {type(e).__name__}: {e}", flush=True)
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status and not os.WIFEXITED(status):
        print(f"{name}: died with status {status}", flush=True)
"""


def test_every_model_module_imports_first_in_a_fresh_process():
    """No circular import whichever model module a script imports first (reducers <-> merging <-> resample)."""
    import pkgutil

    import llava_wb.model as pkg

    names = sorted(f"llava_wb.model.{m.name}" for m in pkgutil.iter_modules(pkg.__path__))
    assert len(names) > 10, names
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH_FIRST, *names], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == "", proc.stdout
