"""What the Numba backend's generated drivers call besides the rule: pointer and bfloat16 intrinsics, and
the lock under which drivers are built, held across `os.fork()`.

Compiled lazily (`intrinsics`), so that importing this module does not import Numba.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from typing import Any


@functools.cache
def intrinsics() -> dict[str, Any]:
    """The driver's pointer and bfloat16 helpers (LLVM intrinsics)."""
    from llvmlite import ir
    from numba import types as nb
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def address(typingctx, integer):
        """An integer data pointer (`Tensor.data_ptr()`) as a `void*` for `numba.carray`."""
        if not isinstance(integer, nb.Integer):
            return None

        def codegen(context, builder, signature, arguments):
            return builder.inttoptr(arguments[0], cgutils.voidptr_t)

        return nb.voidptr(integer), codegen

    @intrinsic
    def bfloat16_to_float32(typingctx, bits):
        """Exact widening: the bfloat16 bits are the high half of the float32."""
        if bits != nb.uint16:
            return None

        def codegen(context, builder, signature, arguments):
            wide = builder.zext(arguments[0], ir.IntType(32))
            return builder.bitcast(builder.shl(wide, ir.Constant(ir.IntType(32), 16)), ir.FloatType())

        return nb.float32(bits), codegen

    @intrinsic
    def float32_to_bfloat16(typingctx, value):
        """Round to nearest even, NaN → 0x7FC0: `c10::BFloat16`'s `round_to_nearest_even`."""
        if value != nb.float32:
            return None

        def codegen(context, builder, signature, arguments):
            i32 = ir.IntType(32)
            bits = builder.bitcast(arguments[0], i32)
            lowest_kept = builder.and_(builder.lshr(bits, ir.Constant(i32, 16)), ir.Constant(i32, 1))
            rounded = builder.lshr(builder.add(bits, builder.add(lowest_kept, ir.Constant(i32, 0x7FFF))),
                                   ir.Constant(i32, 16))
            is_nan = builder.fcmp_unordered("uno", arguments[0], arguments[0])
            result = builder.select(is_nan, ir.Constant(i32, 0x7FC0), rounded)
            return builder.trunc(result, ir.IntType(16))

        return nb.uint16(value), codegen

    return {"address": address, "bfloat16_to_float32": bfloat16_to_float32,
            "float32_to_bfloat16": float32_to_bfloat16}


def driver_helper(name: str) -> Any:
    """One of the pointer/bfloat16 helpers, for the generated drivers."""
    return intrinsics()[name]


#: Held while a driver is built, so that threads stepping the same new variant build it once. Reentrant, so
#: that a thread forking while it builds one gets past `_wait_for_compiles`.
BUILDING = threading.RLock()
#: The locks `_wait_for_compiles` took before a fork (guarded by `BUILDING`), released after it.
_HELD_OVER_FORK: list[Any] = []


def _wait_for_compiles() -> None:
    """Before `os.fork()`: wait until no other thread builds or compiles a driver, and hold that.

    A forked child has only the forking thread. A lock that another thread of the parent held at the fork
    never opens in the child: ours while that thread built a driver, or Numba's global compiler lock, held
    while Numba and LLVM compile (a driver compiles on its first call), and the child's first compile would
    wait forever. So the fork waits for compiles in flight; locks are taken in this order everywhere.
    """
    BUILDING.acquire()
    held = [BUILDING]
    compiler_lock = sys.modules.get("numba.core.compiler_lock")
    if compiler_lock is not None:  # not imported yet: nothing compiles
        compiler_lock.global_compiler_lock.acquire()
        held.append(compiler_lock.global_compiler_lock)
    _HELD_OVER_FORK[:] = held


def _release_after_fork() -> None:
    """After `os.fork()`, in the parent and in the child: release what `_wait_for_compiles` took."""
    held = _HELD_OVER_FORK[:]
    _HELD_OVER_FORK.clear()
    for lock in reversed(held):
        lock.release()


os.register_at_fork(before=_wait_for_compiles, after_in_parent=_release_after_fork,
                    after_in_child=_release_after_fork)
