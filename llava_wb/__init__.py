"""llava_wb: a notebook-first workbench for training LLaVA-style vision-language models at scale.

Importing the package is cheap: it pulls in neither torch nor transformers. Subpackages:
``llava_wb.data`` (shards -> streaming samples -> batches), and later ``model``, ``train``, ``eval``.
"""

__version__ = "0.1.0"
