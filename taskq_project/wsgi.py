import io
import os
from collections.abc import Callable, Iterable
from typing import Any

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskq_project.settings")

django_application = get_wsgi_application()

StartResponse = Callable[..., Any]


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Django, with request bodies sent in chunks read like any other.

    Django reads exactly CONTENT_LENGTH bytes of a body, and a chunked request
    has none: without this its body would be read as empty, and a registration
    would be refused for a missing id that the client did send. gunicorn
    decodes the chunks; this reads the body (at most one byte over the upload
    limit, so an oversized body still gets its 413 and memory stays bounded)
    and hands Django a body of known length.
    """
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower() and not environ.get(
        "CONTENT_LENGTH"
    ):
        from django.conf import settings

        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        body = environ["wsgi.input"].read(limit + 1 if limit is not None else -1)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
    return django_application(environ, start_response)
