"""Run ``python -m llava_wb.train`` and SIGKILL it at a chosen write: a real kill at a fixed point.

    python tests/crash_hook.py MODULE:FUNCTION PATH_REGEX -- CONFIG [overrides...]

Before ``MODULE.FUNCTION`` runs with an argument whose path matches ``PATH_REGEX`` (``re.search``),
the process kills its whole process group (itself and its loader workers) with SIGKILL. Start it
with ``start_new_session=True``. Nothing of the code under test is replaced: the kill lands where a
crash or power loss could, which polling for a file cannot hit deterministically on a fast save.
"""

from __future__ import annotations

import importlib
import os
import re
import runpy
import signal
import sys


def main() -> None:
    target, pattern, sep, *train_args = sys.argv[1:]
    assert sep == "--", __doc__
    module_name, attr = target.split(":")
    module, regex = importlib.import_module(module_name), re.compile(pattern)
    original = getattr(module, attr)

    def killing(*args, **kwargs):
        for value in (*args, *kwargs.values()):
            if isinstance(value, (str, os.PathLike)) and regex.search(os.fspath(value)):
                os.killpg(os.getpgid(0), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(module, attr, killing)
    sys.argv = ["llava_wb.train", *train_args]
    runpy.run_module("llava_wb.train", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
