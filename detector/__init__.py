"""Image side of the counterfeit detector: decoding, embedding, policy, scanning, reports and the CLI."""

__version__ = "0.1.0"
