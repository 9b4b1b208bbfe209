"""Data: read sources, build tokenizers, turn examples into tensors the same way for
training and serving."""
