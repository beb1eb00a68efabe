"""The worker: Celery app and tasks that run cleanse jobs and deliver webhooks.

The API imports only `argd.worker.dispatch` (enqueue a job, queue a webhook) and `argd.worker.webhooks`
(`validate_webhook_url`, `tenant_webhook_secret`); neither loads torch.
"""
