"""Fixtures of the hostile-client tests: a live peer per test (or per module), stopped whatever happens."""
import pytest

from tests.hostile.harness import Peer


@pytest.fixture
def make_peer(tmp_path):
    """make_peer(settings, **Peer keywords) -> a started Peer; stopped at teardown."""
    peers = []

    def make(settings, **kw):
        peer = Peer(tmp_path / f"peer{len(peers)}", settings, **kw)
        peers.append(peer)
        return peer.start()

    yield make
    for peer in peers:
        peer.stop()
