"""`python -m evalkit.audit`: see evalkit/audit/command.py."""
import sys

from evalkit.audit.command import main

sys.exit(main())
