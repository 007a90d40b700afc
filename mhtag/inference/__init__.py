"""Inference: the encoder (image files -> embeddings + head probabilities) and head/neighbour fusion."""
