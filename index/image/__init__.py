"""Image collections: safe decoding, synthetic views, the visual encoder and the logo strop.index."""
