"""zsfs: a compressed RAM filesystem (FUSE), with a zsmalloc-style allocator."""
