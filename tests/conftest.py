import os
from collections.abc import Iterator

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from apikeys_app.services import create_token
from tests.factories import make_namespace

# Modules whose tests share a costly module or session fixture (a server, a
# cluster, a browser): under `make test` each runs on one worker, so the
# fixture starts once. The other tests go out to the workers one at a time.
ONE_WORKER_MODULES = {
    "tests/browser/test_admin_dashboard.py": "browser",
    "tests/browser/test_admin_namespace_page.py": "browser",
    "tests/browser/test_admin_work_fields.py": "browser",
    "tests/client/test_cli_live.py": "client_cli",
    "tests/client/test_client_live.py": "client",
    "tests/client/test_readme_examples.py": "client_examples",
    "tests/client/test_worker_live.py": "client_worker",
    "tests/test_database_faults.py": "database_faults",
    "tests/test_database_settings.py": "database_settings",
    "tests/test_long_polling.py": "long_polling",
    "tests/test_make_run.py": "make_run",
    "tests/test_metrics_live.py": "metrics_live",
    "tests/test_web_server.py": "web_server",
}


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    # One worker more than cores: much of the suite waits on servers,
    # browsers and subprocesses, and the extra worker fills those waits.
    return (os.cpu_count() or 1) + 1


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    # xdist's own --dist loadgroup marks tests through an attribute that
    # pytest 9 no longer reads; the scheduler sees node ids, so group by those.
    from xdist.scheduler import LoadScopeScheduling

    class Scheduler(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return ONE_WORKER_MODULES.get(nodeid.split("::", 1)[0], nodeid)

    return Scheduler(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked slow first, each group in the order it was collected.

    Each runs for many seconds. Started first, they are spread over the
    workers that `make test` runs, and the quick tests fill in around them,
    instead of one of them running on alone at the end.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session", autouse=True)
def _test_process_settings() -> Iterator[None]:
    """Two costs of production's settings that tests pay many times over.

    Passwords are hashed as in production, minus the cost (tests/hashers.py).
    WhiteNoise indexes the collected static files (those of `make run`) each
    time its middleware starts, and each test client starts its own: it
    looks a file up when a request for one comes instead. No in-process
    test requests a static file; the servers that tests start in
    subprocesses run the production settings.
    """
    with override_settings(
        PASSWORD_HASHERS=["tests.hashers.OneIterationPBKDF2PasswordHasher"],
        WHITENOISE_AUTOREFRESH=True,
    ):
        yield


@pytest.fixture
def token(db: None) -> str:
    _, secret = create_token(name="test-worker")
    return secret


@pytest.fixture
def api(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def anon() -> APIClient:
    return APIClient()


@pytest.fixture
def namespace(db: None) -> str:
    return make_namespace("ns").id


@pytest.fixture
def clock(db: None):
    """The database clock, frozen at the start of the test (tests/clock.py)."""
    from tests.clock import Clock

    frozen = Clock()
    frozen.freeze()
    yield frozen
    frozen.thaw()
