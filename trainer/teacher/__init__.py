"""Teacher jobs: cross-encoder and fused bi-encoder teachers for a collection."""
