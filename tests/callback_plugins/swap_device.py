# Test-only callback: plays the hostile local user who swaps the rootfs device node between the role's
# checks and its write. Enabled only by the test that needs it (ANSIBLE_CALLBACKS_ENABLED=swap_device).
from __future__ import annotations

DOCUMENTATION = r"""
name: swap_device
type: notification
short_description: Replace a block device node when a named task starts (tests only)
description:
  - When the task named in E(IRONCORE_TEST_SWAP_TASK) starts, replaces the node E(IRONCORE_TEST_SWAP_DEVICE)
    (C(path:major:minor)) with a block device node of that major and minor.
author: IronCore image collection maintainers
"""

import os
import stat

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "swap_device"
    CALLBACK_NEEDS_ENABLED = True

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        if task.get_name().split(" : ", 1)[-1] != os.environ.get("IRONCORE_TEST_SWAP_TASK"):
            return
        path, major, minor = os.environ["IRONCORE_TEST_SWAP_DEVICE"].rsplit(":", 2)
        os.unlink(path)
        os.mknod(path, stat.S_IFBLK | 0o600, os.makedev(int(major), int(minor)))
