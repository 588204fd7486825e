import pytest
from rest_framework.test import APIClient

from apikeys_app.services import create_token
from tests.factories import make_namespace


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
