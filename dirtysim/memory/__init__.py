"""QEMU's memory API: MemoryRegion tree, FlatView rendering, AddressSpace, MemoryListener."""
