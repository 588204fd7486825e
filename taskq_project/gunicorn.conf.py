"""gunicorn settings, for `make run` and production.

Run as `gunicorn -c taskq_project/gunicorn.conf.py`; each value can be set
from the environment.
"""

import glob
import multiprocessing
import os
import shutil
import tempfile

bind = os.environ.get("GUNICORN_BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
# Requests are short and mostly wait on PostgreSQL: a few processes per core
# keep the cores busy; each holds a database connection per thread, plus two
# for long polling (README, "Production layout").
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
# uvicorn in each worker: an event loop reads requests whole before a view's
# thread is involved, so a client trickling its request in holds no thread
# (taskq_project/asgi.py, taskq_project/server.py).
worker_class = "taskq_project.server.Worker"
# A worker process whose event loop stops answering the master this long is
# replaced (a view waiting on the database does not stop the loop).
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 10
keepalive = 30
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
# gunicorn's control socket sits at one path per user (~/.gunicorn), which
# several servers on one machine (`make cluster`) would take from each other;
# nothing here uses it.
control_socket_disable = True
wsgi_app = "taskq_project.asgi:application"

# The HTTP counts of every worker, summed at each scrape
# (taskq_project.http_metrics). Set here, in the master, so every worker
# inherits it before it imports prometheus-client. One directory per server:
# under the run directory when the supervisor gives one, else a new temporary
# one, unless PROMETHEUS_MULTIPROC_DIR names it.
_made_dir: str | None = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    run_dir = os.environ.get("TASKQ_RUN_DIR")
    if run_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(run_dir, "metrics")
    else:
        _made_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
            prefix="taskq-metrics-"
        )


def on_exit(server: object) -> None:
    # A temporary directory of this server's own goes with it.
    if _made_dir is not None:
        shutil.rmtree(_made_dir, ignore_errors=True)


def on_starting(server: object) -> None:
    # Counts left by an earlier server would be summed with this one's. Only
    # prometheus-client's own files go: the directory may be the operator's.
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(directory, exist_ok=True)
    for path in glob.glob(os.path.join(directory, "*.db")):
        os.remove(path)
