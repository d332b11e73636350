"""tinylm.mm: TinyLM multimodality: image and audio encoders and tokenizers, a multimodal LM wrapper, tiny built-in multimodal data sets."""
