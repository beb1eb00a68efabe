"""One router per resource: models, datasets, jobs, and the health probes."""
