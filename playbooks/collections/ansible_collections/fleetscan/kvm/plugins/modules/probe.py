#!/usr/bin/python
"""Ansible module wrapping fleetscan's host probe (read-only)."""

DOCUMENTATION = r"""
module: probe
short_description: Collect fleetscan's evidence about the AMD 5-level paging KVM hang
description:
  - Reads CPU identity, 5-level paging state, kernel release and configuration, KVM modules
    and parameters, and evidence of the KVM fix 746700d21fd5. Changes nothing on the host.
options:
  root:
    description: Read the host under this directory instead of C(/) (an extracted tree).
    type: str
    default: /
author: fleetscan developers
"""

RETURN = r"""
ansible_facts:
  description: C(fleetscan_probe), the evidence items, each with its source and status.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetscan.kvm.plugins.module_utils.probe import probe_host


def main():
    module = AnsibleModule(
        argument_spec={"root": {"type": "str", "default": "/"}},
        supports_check_mode=True,
    )
    module.exit_json(changed=False, ansible_facts={"fleetscan_probe": probe_host(module.params["root"])})


if __name__ == "__main__":
    main()
