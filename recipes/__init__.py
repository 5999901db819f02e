"""Recipes: the jobs that chain the library and the data tools (``python -m recipes.demo``).

They sit outside ``llava_wb`` because they use ``data_tools`` (synthetic data, conversion), which the
library never imports. ``recipes.chain`` is the tower -> pretrain -> finetune chain of the demo
configs that the demo and the benchmarks share.
"""
