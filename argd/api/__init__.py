"""The REST API (FastAPI): routes per resource, schemas, bearer-key auth, problem-details errors.

`create_app(settings)` in `argd.api.app` builds the application; this package never imports torch at start-up.
"""
