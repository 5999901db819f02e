"""Benchmarks of llava_wb: each ``bench_*.py`` module has a ``main(argv)``; see ``run_all``."""
