"""xtp-ray: cross-lingual latent transplantation (XTransplant) as a distributed batch job on Ray."""

__version__ = "0.1.0"
