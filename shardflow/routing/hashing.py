"""Key -> partition: a stable hash, identical in every process, Python version and machine."""

from __future__ import annotations

import hashlib


def partition_for(key: str, partition_count: int) -> int:
    """The partition of ``key``: BLAKE2b-64 of its UTF-8 bytes, modulo ``partition_count``.

    Never Python's ``hash()``: that is salted per process. Changing this function moves every
    workflow, so it is frozen; tests pin known values.
    """
    # surrogatepass: any Python str routes (the client rejects such ids before writing).
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partition_count
