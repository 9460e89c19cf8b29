"""HTTP API and Celery workers that answer with the champion config."""
