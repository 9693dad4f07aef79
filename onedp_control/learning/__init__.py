"""Training and distillation loops, data windows and checkpoints."""
