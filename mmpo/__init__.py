"""mmpo: preference optimisation that makes image and video language models hallucinate less."""

__version__ = "0.1.0"
