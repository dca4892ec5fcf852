"""The HTTP layer (FastAPI): the application factory (:func:`app.api.main.create_app`), authentication, errors,
limits, observability, schemas and one module of routes per resource. The only package that imports FastAPI."""
