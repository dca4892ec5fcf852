"""The service's core, imported by every other layer: settings, errors, value checks, logging, the offline guard
and back-pressure on the inference slots."""
