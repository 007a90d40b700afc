"""Models: the backbone registry, the multi-head tagger, its loss and its checkpoints."""

TEXT_TOWER = "text_tower.pt"  # a model's text tower, beside its checkpoint (`models.text`)
