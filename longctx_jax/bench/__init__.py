"""Performance benchmarks (`longctx bench attention | train | ring | sparse`) and the cost model:
speed and compiled memory, as ratios against a baseline measured in the same run."""
