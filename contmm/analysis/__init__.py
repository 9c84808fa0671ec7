"""Analysis of finished runs: ``contmm plot`` (forgetting curves, the matrix), ``contmm
report`` (the metrics table) and the grid of drawings after every stage."""
