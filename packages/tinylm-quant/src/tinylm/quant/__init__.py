"""tinylm.quant: TinyLM quantization through torchao: INT8, INT4, float8 and QAT, measured for quality, memory and speed."""
