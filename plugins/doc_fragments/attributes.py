# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

"""What the attributes of this collection's modules mean, documented once."""

from __future__ import annotations


class ModuleDocFragment:
    # Every module states support and details for each of these itself.
    DOCUMENTATION = r"""
attributes:
  check_mode:
    description: Can run in check mode and report what would change without changing anything.
  diff_mode:
    description: Reports what changed (or would change, in check mode) when run with C(--diff).
  idempotent:
    description:
      - Running it again with the same options and an unchanged environment reports no change and changes nothing.
  action_group:
    description: Belongs to the action group C(ironcore.image.image), so C(module_defaults) can set its options.
    support: full
    membership:
      - ironcore.image.image
"""
