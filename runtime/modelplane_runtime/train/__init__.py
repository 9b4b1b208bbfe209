"""The training loop and what it needs: distribution, sampling, schedules, checkpoints,
progress reporting."""
