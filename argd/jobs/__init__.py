"""The job domain: the public job shape, the statuses, the service functions and the webhook policy.

Torch-free, between the adapters (`argd.api` routes, `argd.worker` tasks) and `argd.persistence`. This file
imports nothing, so that `argd.persistence` can read the status vocabulary (`argd.jobs.status`) without
pulling in the service layer that sits above it.
"""
