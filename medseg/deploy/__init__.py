"""Model compression for deployment: int8 quantisation (``quantize``, ``calibration``, ``runtime``),
fp16 exports (``half``), channel pruning (``prune``) and knowledge distillation (``distill``)."""
