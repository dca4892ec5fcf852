"""From image bytes to oriented boxes: decoding (``imaging``, ``raster``), tiling and resampling (``pipeline``,
``geometry``), the model and its runtimes (``detector``, ``runtimes``, ``augment``), the GSD estimate and the
railcar-train rule. Never touches the database."""
