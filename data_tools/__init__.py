"""data_tools: turn LLaVA-format records + media folders into WebDataset shards, and make demo data."""
