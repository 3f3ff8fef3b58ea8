"""medseg: 3D medical image segmentation with exact geometry and clinical evaluation."""

__version__ = "0.1.0"
