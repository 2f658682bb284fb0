"""The toolchain matrix, its lock, and the cached environments built from the lock.

Standard library only: the Makefile runs this before any environment exists.
"""
