"""Training: the continual loop (``runner``), the LightningModule, a Trainer per stage, the
data of a stage, the optimizer, multi-GPU (DDP gathering, FSDP2 sharding) and what a run
measures about itself (memory estimate, peak memory, environment)."""
