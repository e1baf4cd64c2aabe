"""Fixtures of the serve tests: shared tiny checkpoints and started services.

With pytest's prepend import mode `from conftest import real_path` may resolve to this module
once it is loaded, so the root conftest's helpers are re-exported here (as tests/hardening
does).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from serve_fixtures import make_config, tiny_echonet

from cinelab.serve.service import Service

_spec = importlib.util.spec_from_file_location(
    "cinelab_tests_root_conftest_serve", Path(__file__).resolve().parents[1] / "conftest.py")
assert _spec is not None and _spec.loader is not None
_root = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_root)
ROOT, REAL, real_path = _root.ROOT, _root.REAL, _root.real_path


@pytest.fixture(scope="session")
def echonet_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny EchoNet checkpoints shared by the serve tests."""
    return tiny_echonet(tmp_path_factory.mktemp("serve_models") / "echonet")


@pytest.fixture
def service_factory(tmp_path: Path, echonet_model: Path) -> Iterator[Any]:
    """Build (and at the end stop) services over this test's state folder."""
    made: list[Service] = []

    def build(node: bool = False, start: bool = True, **extra: Any) -> Service:
        service = Service(make_config(tmp_path / "state", echonet_model, **extra))
        made.append(service.start(node=node) if start else service)
        return service

    yield build
    for service in made:
        service.stop()


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread when the CPUs are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
