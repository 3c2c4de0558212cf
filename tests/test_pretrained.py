"""hbfp_timm.models.pretrained: reaching the Hub once, with a short probe, and the local cache when it cannot be
reached (the other pretrained=True paths are tested through the Hub layouts in test_hub.py)."""
import socket
import time

import huggingface_hub
import pytest
import timm

from hbfp_timm.models import pretrained

from hub_fixtures import fake_hub, hub_cache  # noqa: F401  (fixtures)


def _closed_port_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return f'http://127.0.0.1:{sock.getsockname()[1]}'


def test_hub_reachable_asks_the_endpoint_once(fake_hub, monkeypatch):
    endpoint, received = fake_hub
    assert pretrained.hub_reachable()
    assert [method for method, _, _ in received['requests']] == ['HEAD']
    monkeypatch.setattr(huggingface_hub.constants, 'ENDPOINT', _closed_port_endpoint())
    assert not pretrained.hub_reachable(timeout=1.0)


def test_unreachable_hub_switches_to_the_cache_for_the_block_only(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(huggingface_hub.constants, 'ENDPOINT', _closed_port_endpoint())
    with pretrained.offline_if_hub_unreachable(timeout=1.0) as offline:
        assert offline and huggingface_hub.constants.HF_HUB_OFFLINE
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False
    monkeypatch.setattr(pretrained, 'hub_reachable', lambda timeout: True)
    with pretrained.offline_if_hub_unreachable() as offline:
        assert not offline and not huggingface_hub.constants.HF_HUB_OFFLINE


def test_offline_pretrained_load_without_cache_fails_at_once(hub_cache, monkeypatch):
    """With the Hub unreachable, a weights file missing from the cache is one clear error within seconds, not
    after huggingface_hub's retries (about 50 s without a network)."""
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(pretrained, 'hub_reachable', lambda timeout: False)
    start = time.perf_counter()
    with pytest.raises(OSError, match='cannot find the requested files in the local cache'):
        with pretrained.offline_if_hub_unreachable():
            timm.create_model('resnet18', pretrained=True)
    assert time.perf_counter() - start < 10
