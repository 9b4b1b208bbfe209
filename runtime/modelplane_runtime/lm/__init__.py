"""Models built from `transformers`: causal language models (task text-generation), and
sequence classifiers from a Hugging Face folder.

- `data`: JSONL records (text, prompt/response, chat messages) to padded token tensors
  with the loss only where the model should learn to write;
- `tokenizer`: the byte-level BPE tokenizer a from-scratch model trains on its data;
- `models`: the base model folder an init URI names, and the model (or LoRA adapter)
  to train;
- `loss`: the next-token loss and the evaluation metrics (perplexity, tokenAccuracy);
- `classification`: a Hugging Face folder as a sequence classifier (architecture
  huggingface, task text-classification), trained through the classifiers' path;
- `artifact`: a trained model as a Hugging Face folder plus the model card, and back.
"""
