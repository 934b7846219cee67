"""`make bench`: the pipeline measured end to end on private services (run from a clone).

`python -m devtools.bench SCENARIO` runs it; results go to `devtools/bench/results/`.
"""
