"""Prediction in the input's exact geometry.

``predictor`` (:class:`~medseg.inference.predictor.Predictor`: one volume in, label map out),
``window`` (Gaussian sliding window + mirroring TTA), ``geometry`` (network grid -> input
grid, slab-wise), ``postprocess`` (per-structure components/holes), ``inputs`` (finding
cases in files, folders, manifests, DICOM), ``batch`` (unattended runs: log, resume,
workers), ``dicom_seg`` (DICOM-SEG output), ``export`` (TorchScript/ONNX deployment).
Nothing is imported here, so ``import medseg.inference.<module>`` stays as light as it can.
"""
