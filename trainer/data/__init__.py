"""The data: text corpora to token arrays, the tokenizer, and the batches a rank trains on."""
