"""The benches run from the source tree (`python -m bench.faults`), not from the installed package: put the
repository root on the import path so their pure logic can be tested here."""

from __future__ import annotations

import sys

from tests.tools import REPO

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
