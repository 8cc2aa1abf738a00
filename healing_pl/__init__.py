"""healing-pl: adversarial unlearning and model healing with PyTorch Lightning."""

__version__ = "0.1.0"
