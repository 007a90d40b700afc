"""What every layer needs: user errors, the training config, where work runs, atomic file writes."""
