"""Listeners that react to the memory map: KVM (memslots, dirty logging)."""
