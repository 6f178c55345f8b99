"""strop's data layer: document store, encoders, FAISS indexes and versions.

Imports neither ``service`` nor ``trainer``.
"""
