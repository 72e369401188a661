"""Jobs: the service the API submits through (service.py), the Celery queue (queue.py), the lifecycle
every job shares (lifecycle.py) and the job kinds (registry.py, one module per kind in kinds/)."""
