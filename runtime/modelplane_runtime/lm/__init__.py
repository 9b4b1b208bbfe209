"""Causal language models built from `transformers` (task text-generation).

- `data`: JSONL records (text, prompt/response, chat messages) to padded token tensors
  with the loss only where the model should learn to write;
- `tokenizer`: the byte-level BPE tokenizer a from-scratch model trains on its data;
- `models`: the base model folder an init URI names, and the model (or LoRA adapter)
  to train;
- `loss`: the next-token loss and the evaluation metrics (perplexity, tokenAccuracy);
- `artifact`: a trained model as a Hugging Face folder plus the model card, and back.
"""
