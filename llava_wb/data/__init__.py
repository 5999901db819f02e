"""Streaming multimodal data: WebDataset shards -> decoded samples -> tokenized, padded batches.

Modules: ``config`` (typed data config), ``sources`` (shard lists from folders, globs, brace
patterns, list files, URLs), ``stream`` (the resumable IterableDataset), ``decode``
(``decode_sample``: per-modality lazy decoding; registers the ``image``, ``video`` and ``audio``
decoders of ``decoders.MEDIA_DECODERS``), ``conversation`` (templates, labels from spans; registers
the templates of ``templates`` in ``template_base.TEMPLATES``),
``collate`` (padding), ``skips`` (counting and limiting bad samples), ``loader`` (DataLoader with
state_dict / load_state_dict), ``transport`` (a worker's batch tensors in one shared block).
"""
