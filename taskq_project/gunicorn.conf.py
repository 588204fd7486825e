"""gunicorn settings, for `make run` and production.

Run as `gunicorn -c taskq_project/gunicorn.conf.py`; each value can be set
from the environment.
"""

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
# Requests are short and mostly wait on PostgreSQL: a few processes per core,
# each with threads, keep the cores busy without oversubscribing the database.
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread"
# A worker stuck longer than this is killed and replaced.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 10
keepalive = 30
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
wsgi_app = "taskq_project.wsgi:application"
# The longest request line gunicorn allows (its default is 4094): a list
# filtered by several statuses and a cursor, with percent-encoded ids, fits.
limit_request_line = 8190
