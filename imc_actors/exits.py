"""KeyboardInterrupt and SystemExit out of the library's context managers, unwrapped.

Under Trio's strict exception groups every nursery wraps what crosses it in a
BaseExceptionGroup, so a Ctrl-C in the block of :func:`~imc_actors.open_conference` (or in one
of its tasks) reached an embedder's ``trio.run(main)`` as a group (two levels deep from
:func:`~imc_actors.server.open_server`), which ``except KeyboardInterrupt`` does not catch.
:func:`plain_exits` lets such an exit out the way :class:`asyncio.TaskGroup` does: as the
KeyboardInterrupt or SystemExit itself, with a plain traceback; when something else went wrong
too (not only the Cancelled the exit caused in the other tasks), the group is shown as its
``__context__``. A group without such an exit is left alone.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import ParamSpec, TypeVar

import trio

__all__ = ["exit_in", "plain_exits"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

_EXITS = (KeyboardInterrupt, SystemExit)


def exit_in(group: BaseExceptionGroup) -> BaseException | None:
    """The first KeyboardInterrupt or SystemExit in ``group`` (nested groups searched), or None."""
    for exc in group.exceptions:
        if isinstance(exc, _EXITS):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = exit_in(exc)
            if found is not None:
                return found
    return None


def _besides(exc: BaseException) -> bool:
    return not isinstance(exc, BaseExceptionGroup | trio.Cancelled | KeyboardInterrupt | SystemExit)


def plain_exits(
    open_cm: Callable[_P, AbstractAsyncContextManager[_T]],
) -> Callable[_P, AbstractAsyncContextManager[_T]]:
    """Decorate a function returning an async context manager: a KeyboardInterrupt or SystemExit
    that leaves it inside exception groups leaves unwrapped (see the module docstring)."""

    @functools.wraps(open_cm)
    @asynccontextmanager
    async def opened(*args: _P.args, **kwargs: _P.kwargs) -> AsyncIterator[_T]:
        try:
            async with open_cm(*args, **kwargs) as value:
                yield value
        except BaseExceptionGroup as group:
            stop = exit_in(group)
            if stop is None:
                raise
            if group.subgroup(_besides) is None:  # the exit, and the Cancelled it caused
                raise stop from None
            raise stop  # noqa: B904 - its context: the group, with what else went wrong

    return opened
