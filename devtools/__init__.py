"""Development tooling, never shipped: the benchmark, process helpers and the Realtime
protocol stand-in that both `tests/` and the benchmark use. Runs from a clone."""
