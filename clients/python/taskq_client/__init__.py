"""taskq_client: the Python client and worker runner of the taskq task-lease service.

`Client` and `AsyncClient` wrap the HTTP API (configured by arguments or by
TASKQ_URL and TASKQ_TOKEN); `Worker` and `AsyncWorker` run handlers on
leased tasks with heartbeats and graceful shutdown.
"""

from ._core import __version__
from .async_client import AsyncClient
from .client import Client
from .errors import (
    BadRequest,
    ConfigError,
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    StaleLease,
    TaskqError,
    Unauthorized,
    Unavailable,
)
from .models import (
    UNSET,
    Attempt,
    ExtendResult,
    Lease,
    LeaseError,
    Namespace,
    NamespaceStats,
    NewTask,
    ReleaseResult,
    ReleaseStatus,
    Task,
)
from .worker import AsyncWorker, Retry, Worker, WorkerStats

__all__ = [
    "UNSET",
    "AsyncClient",
    "AsyncWorker",
    "Attempt",
    "BadRequest",
    "Client",
    "ConfigError",
    "Conflict",
    "ExtendResult",
    "Forbidden",
    "Lease",
    "LeaseError",
    "Namespace",
    "NamespaceStats",
    "NewTask",
    "NotFound",
    "RateLimited",
    "ReleaseResult",
    "ReleaseStatus",
    "Retry",
    "StaleLease",
    "Task",
    "TaskqError",
    "Unauthorized",
    "Unavailable",
    "Worker",
    "WorkerStats",
    "__version__",
]
