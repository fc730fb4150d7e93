"""fleetscan: find KVM hypervisors that will hang their guests under AMD 5-level paging."""

__version__ = "0.1.0"
