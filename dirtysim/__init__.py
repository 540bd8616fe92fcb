"""dirtysim: an event-sourced simulator of QEMU/KVM dirty-page tracking during live migration."""

__version__ = "0.1.0"
