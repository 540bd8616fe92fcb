"""The x86 boards dirtysim builds as QEMU does: ``pc`` (i440fx) and ``q35``; ``layout`` holds their numbers."""
