"""The one thing A1111's test/ takes from outside: `base_url`, which A1111 gets from the pytest-base-url
plugin (`--base-url`, default http://127.0.0.1:7860 in its pyproject.toml). That plugin is not in diffserve's
lock, so this gives the same option and fixture. The key rides in the URL's user info
(http://user:KEY@host:port): `requests` sends it as HTTP Basic auth, and the test bodies stay unchanged."""

import pytest


def pytest_addoption(parser):
    parser.addoption("--base-url", default="http://127.0.0.1:7860", help="the server A1111's API tests call")


@pytest.fixture(scope="session")
def base_url(request):
    return request.config.getoption("--base-url").rstrip("/")
