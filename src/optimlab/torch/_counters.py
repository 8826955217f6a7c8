"""The step counters' compiled increment (imported only where Numba is installed: it imports Numba).

`torch._foreach_add_` on 10,000 0-dim CPU counters costs ~15 ms per step (one dispatch each); this loop
writes the same float32 values (`x + 1` in float32, as torch's float32 add) through the counters' data
pointers in microseconds and reports the new counts, so a step also needs no `.item()` per counter.
"""

import numba
import numpy as np

from ..backends.numba_cpu import driver_helper

address = driver_helper("address")


@numba.njit(cache=True, nogil=True)
def advance(pointers: np.ndarray, counts: np.ndarray) -> None:
    """Add 1 to the float32 scalar at each of `pointers` and write the new values to `counts`."""
    for i in range(pointers.size):
        counter = numba.carray(address(pointers[i]), 1, np.float32)
        counter[0] += np.float32(1.0)
        counts[i] = counter[0]
