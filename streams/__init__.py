"""Task-stream families: one file each. Configs refer to them by import path."""
