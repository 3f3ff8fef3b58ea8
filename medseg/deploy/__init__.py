"""Model compression for deployment: int8 quantisation (``quantize``) and channel pruning (``prune``)."""
