"""The worker: Celery app and tasks that run cleanse jobs and deliver webhooks.

The API imports only `argd.worker.dispatch` (enqueue a job, queue a webhook: `CeleryQueue`); it loads no
torch. The rules about jobs and webhooks are the domain's (`argd.jobs`); the worker runs jobs and delivers.
"""
