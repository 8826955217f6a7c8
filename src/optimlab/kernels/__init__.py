"""What the compiled backends share, below their dialects: `plan` (the kernel plan both derive their generated
kernels from: state slots, flags and runtime scalars, the chunk table, the generated names), `numba_scalars`
(Numba's scalar type that behaves like a Python scalar in torch), `numba_runtime` (the Numba drivers' pointer
and bfloat16 intrinsics, the build lock held over `os.fork()`) and `workers` (the work-sharing thread pool)."""
