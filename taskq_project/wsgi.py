"""The WSGI entry point, for `manage.py runserver` and the test server.

`make run` and production serve the ASGI application (taskq_project.asgi),
which bounds request bodies and reads them whole before a view runs.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskq_project.settings")

application = get_wsgi_application()
