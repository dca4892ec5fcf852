"""Anomaly statistics of count series (``anomaly``) and the cache of fits prepared ahead of uploads
(``fit_cache``)."""
