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
  canary:
    description:
      - Run the KVM canary on the live host - one vCPU, one 64 KiB memory slot, a guest whose
        first instruction at the reset vector is C(hlt), bounded by I(canary_timeout). Needs
        access to /dev/kvm (root or group kvm); without it the canary reports why and nothing
        is escalated.
    type: bool
    default: false
  canary_timeout:
    description: Seconds before an unanswered KVM_RUN is interrupted (a hang).
    type: float
    default: 2.0
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
        argument_spec={
            "root": {"type": "str", "default": "/"},
            "canary": {"type": "bool", "default": False},
            "canary_timeout": {"type": "float", "default": 2.0},
        },
        supports_check_mode=True,
    )
    params = module.params
    # Only the check's own guest (hlt): the test guests stay out of the production path.
    evidence = probe_host(params["root"], params["canary"], params["canary_timeout"])
    module.exit_json(changed=False, ansible_facts={"fleetscan_probe": evidence})


if __name__ == "__main__":
    main()
