"""Real models: weight-name mapping from published checkpoints onto the zoo graphs."""
