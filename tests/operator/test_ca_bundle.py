"""What the operator publishes as the control plane's CA while it is renewed: the new CA first, the
replaced one beside it for the overlap and no longer, and the last good one while the file is unreadable."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from llmroute.operator.catrust import CABundle, certificates
from tests.controlplane.test_tls import chart_certificate, install
from tests.tools import helm_bin

__all__ = ["helm_bin"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pems(helm: Path, count: int) -> list[bytes]:
    return [chart_certificate(helm)["ca.crt"] for _ in range(count)]


def test_a_renewed_ca_is_published_with_the_old_one_until_the_overlap_ends(helm_bin: Path, tmp_path: Path) -> None:
    first, second, third = pems(helm_bin, 3)
    install(tmp_path, {"ca.crt": first})
    clock = Clock()
    bundle = CABundle(tmp_path / "ca.crt", overlap=3600, clock=clock)
    assert certificates(bundle.pem()) == certificates(first.decode())
    assert not bundle.refresh()  # nothing changed
    install(tmp_path, {"ca.crt": second})
    assert bundle.refresh()
    assert certificates(bundle.pem()) == certificates((second + first).decode())
    clock.now += 3599
    assert not bundle.refresh()
    clock.now += 1
    assert bundle.refresh()  # the overlap is over: only the new CA
    assert certificates(bundle.pem()) == certificates(second.decode())
    # Two renewals in a row: the bundle holds the newest and the one it replaced, never a third.
    install(tmp_path, {"ca.crt": third})
    assert bundle.refresh()
    assert certificates(bundle.pem()) == certificates((third + second).decode())


def test_an_unreadable_file_keeps_the_last_ca_published(helm_bin: Path, tmp_path: Path) -> None:
    [pem] = pems(helm_bin, 1)
    install(tmp_path, {"ca.crt": pem})
    bundle = CABundle(tmp_path / "ca.crt")
    (tmp_path / "ca.crt").unlink()
    assert not bundle.refresh()
    assert certificates(bundle.pem()) == certificates(pem.decode())
    install(tmp_path, {"ca.crt": b"not a certificate\n"})
    assert not bundle.refresh()
    assert certificates(bundle.pem()) == certificates(pem.decode())


def test_a_file_without_a_certificate_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text(base64.b64encode(b"junk").decode())
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        CABundle(tmp_path / "ca.crt")
