"""`make test` runs the suite on two pytest-xdist workers with `--dist loadgroup`; the tests of
one file (and of tests/production/) must stay on one worker, or each worker builds the same
session fixtures (reference runs, nightly outputs, a PostgreSQL server) again. xdist groups a
test by appending `@<group>` to its id; when a pytest or xdist upgrade stops that (as pytest
9.2 does, pytest-dev/pytest-xdist#1386), nothing else fails: the suite only gets slower."""
from __future__ import annotations


def test_each_file_is_one_xdist_group(request):
    if not getattr(request.config.option, "loadgroup", False):
        return  # not under `-n N --dist loadgroup` (e.g. `make test-fast`): no groups to check
    assert request.node.nodeid.endswith("@test_xdist_groups.py"), (
        f"test id {request.node.nodeid!r} carries no xdist group: --dist loadgroup is not grouping "
        "(tests/conftest.py's marks, or a pytest/pytest-xdist version that ignores them)"
    )
