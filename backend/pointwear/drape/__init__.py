"""Drape models: outfit code + body shape -> clothing points with skin weights."""
