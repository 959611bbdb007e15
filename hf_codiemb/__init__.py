"""hf_codiemb: CoDiEmb (arXiv 2508.11442) as a sentence-transformers Trainer extension."""

__version__ = "0.1.0"
