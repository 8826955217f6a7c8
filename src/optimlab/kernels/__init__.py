"""Compiler support for the compiled backends (numba's scalar type that behaves like a Python scalar in torch)."""
