"""Models: the backbone registry, the multi-head tagger, its loss and its checkpoints."""
