"""``python -m llava_wb.train CONFIG [overrides]``: see ``llava_wb.train.cli``."""

from llava_wb.train.cli import main

raise SystemExit(main())
