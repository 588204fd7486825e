"""Writing Django's database settings back as a DATABASE_URL.

For subprocesses that must reach the same server (the Celery worker and the
import under test, the fuzzing server, the benchmarks): the embedded
server's Unix socket directory goes, percent-encoded, in the host part.
"""

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote


def database_url(settings_dict: Mapping[str, Any], *, name: str | None = None) -> str:
    user = quote(settings_dict["USER"] or "", safe="")
    password = quote(settings_dict["PASSWORD"] or "", safe="")
    host_name = settings_dict["HOST"]
    if not host_name and settings_dict["ENGINE"] == "taskq_project.embedded_backend":
        # Not connected yet in this process: the embedded server's socket.
        from taskq_project.embedded_backend.base import socket_directory

        host_name = socket_directory()
    host = quote(host_name or "", safe="")
    port = f":{settings_dict['PORT']}" if settings_dict["PORT"] else ""
    database = quote(name or settings_dict["NAME"], safe="")
    return f"postgresql://{user}:{password}@{host}{port}/{database}"
