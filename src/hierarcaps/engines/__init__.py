"""Model back-ends behind small interfaces: generation (LLM / seq2seq), NLI, embeddings."""
