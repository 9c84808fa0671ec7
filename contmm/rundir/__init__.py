"""The run directory: writing it (atomic, rank 0 only) and reading it back, stage
checkpoints, what in it is contmm's, the lock that keeps one writer, and the fingerprint of
the inputs a run's results depend on."""
