"""The whole suite's one hook: how `make test` spreads it over processes (pytest-xdist, `--dist loadgroup`).

Tests are handed to the workers one at a time, except that every test of a module that uses a module-,
package- or class-scoped fixture stays with the module's other such tests, on one worker: such a fixture is
set up once per process that uses it, and some are one run for the whole module (`scenario_outcomes` starts
every selected distributed scenario in one process group, chosen from `session.items`, which on each worker
is the whole collection; `child_outcomes` runs every child scenario in one subprocess; the wheel is built
once). A new module with such a fixture is grouped without being named here. Without xdist the marks change
nothing.
"""

from __future__ import annotations

import pytest

#: Fixture scopes wider than one test but narrower than the session (session fixtures here are cheap or
#: pytest's own, such as `tmp_path_factory`).
SHARED_SCOPES = ("class", "module", "package")


def uses_shared_fixture(item: pytest.Item) -> bool:
    """Whether `item` uses (directly or through another fixture) a class-, module- or package-scoped fixture."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(definitions[-1].scope in SHARED_SCOPES for definitions in info.name2fixturedefs.values()
               if definitions)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks into the node ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if uses_shared_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
