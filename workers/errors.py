"""Errors the kernels raise for bad input; the CLI turns them into one line and exit 2."""


class KernelInputError(ValueError):
    """Bad input to a kernel: unknown name, missing file, incompatible checkpoint, bad value."""
