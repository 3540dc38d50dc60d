"""Fine-tune jobs, console side: the form and its estimate, starting, cancelling and resuming a run, its
checkpoints in tiers, and the adapter or model it produces (the training itself is workers/jobs/finetune.py)."""
