"""The host probe: stdlib-only, read-only, Python 3.6+, runs on targets through Ansible.

This package is also the Ansible collection's module_utils (a symlink), so it is the single
place that knows how to read a host; nothing here may import from outside the package.
"""

from .host import PROBE_VERSION, probe_host

__all__ = ["PROBE_VERSION", "probe_host"]
