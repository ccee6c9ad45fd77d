"""TFX's Trainer with an executor that hands run_fn the Examples artifact's folder (executor.py)."""
