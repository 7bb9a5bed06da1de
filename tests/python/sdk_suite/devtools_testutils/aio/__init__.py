"""Async counterparts of devtools_testutils' decorators (live mode only)."""

import functools

from .. import _trim_kwargs


def recorded_by_proxy_async(test_func):
    """Pass-through for async tests: in live mode without recording the real
    decorator just awaits the test."""

    @functools.wraps(test_func)
    async def record_wrap(*args, **kwargs):
        return await test_func(*args, **_trim_kwargs(test_func, kwargs))

    return record_wrap
