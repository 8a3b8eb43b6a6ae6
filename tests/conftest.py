from __future__ import annotations

import pytest

from .servers import DiffserveServer, ImageHost, png_bytes


@pytest.fixture(scope="session")
def models_root(tmp_path_factory):
    """One built tiny model shared by every server the tests start."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def image_host():
    host = ImageHost().start()
    host.add("/cat.png", png_bytes(64, 64))
    host.add("/wide.png", png_bytes(100, 70))
    host.add("/cat.jpg", png_bytes(64, 64, fmt="JPEG"), "image/jpeg")
    host.add("/not-an-image.png", b"<html>hello</html>", "text/html")
    yield host
    host.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory, models_root):
    srv = DiffserveServer(tmp_path_factory.mktemp("data"), models_root).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def key(server):
    return server.create_key("--name", "tests")


@pytest.fixture(scope="session")
def other_key(server):
    return server.create_key("--name", "someone-else")


@pytest.fixture(scope="session")
def dialect_server(tmp_path_factory, models_root):
    """One server shared by the dialect tests (realtime, pony, HiDream, Qolaba, management), with the
    operator settings they need: see tests/dialects.py."""
    from .dialects import start_dialect_server

    srv = start_dialect_server(tmp_path_factory.mktemp("dialects"), models_root)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def hardened_server(tmp_path_factory, models_root):
    """Private URLs refused, default limits: shared by test_hostile and test_schemathesis (tests/hardened.py)."""
    from .hardened import start_hardened_server

    srv = start_hardened_server(tmp_path_factory.mktemp("hardened"), models_root)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Engine-level tests run tiny models in this process: one torch thread is as fast for tiny tensors,
    and fair to a shared machine. The previous thread count is restored after the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def jobs_server(tmp_path_factory, models_root):
    """A server of its own for the native job API, the CLI client and the playground (they cancel and count)."""
    srv = DiffserveServer(tmp_path_factory.mktemp("jobs"), models_root).start()
    yield srv
    srv.stop()
