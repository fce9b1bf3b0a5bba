"""Conveyor's benchmarks and fault drill (see bench/README.md). Kept import-free: the workers
the benchmark starts (`python -m bench.warm_worker`) import this package too."""
