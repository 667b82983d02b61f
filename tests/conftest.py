"""Shared fixtures: the real COCO sample in tests/data/coco_sample (tests fail, not skip, without it)."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import COCO_SAMPLE, copy_sample


@pytest.fixture(scope="session")
def coco_sample() -> Path:
    """The two real COCO val2017 images with their annotations in every format (read-only)."""
    assert COCO_SAMPLE.is_dir(), f"the real-format fixture is missing: {COCO_SAMPLE}"
    return COCO_SAMPLE


@pytest.fixture
def coco_copy(tmp_path: Path) -> Path:
    """A writable copy of the COCO sample, for tests that corrupt it."""
    return copy_sample(tmp_path)


_connect = socket.socket.connect


def _loopback_only(sock: socket.socket, address: Any) -> Any:
    """socket.connect that refuses every address but loopback and Unix sockets (DDP's gloo is local)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise RuntimeError(f"a test tried to open a network connection to {address!r}")
    return _connect(sock, address)


@pytest.fixture(scope="session", autouse=True)
def no_network() -> Iterator[None]:
    """No test touches the network: remote connections fail, and the Hugging Face hub is offline."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _loopback_only)
        try:
            import huggingface_hub.constants

            # huggingface_hub reads the environment at import; it may have been imported already
            patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        except ImportError:
            pass
        yield
