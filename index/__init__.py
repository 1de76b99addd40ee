"""Vector side of the counterfeit detector: per-brand FAISS indexes, their manifests, search and calibration."""
