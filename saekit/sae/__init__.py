"""Sparse autoencoders: architectures, the training job, evaluation, templates, import/export."""
