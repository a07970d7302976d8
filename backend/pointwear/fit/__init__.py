"""Outfit fitting: image-space losses (2D Chamfer via distance transforms, soft coverage),
visibility against the rasterised body, and the measurements reported in result.json."""
