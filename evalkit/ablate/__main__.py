"""`python -m evalkit.ablate`: see evalkit/ablate/command.py."""
import sys

from evalkit.ablate.command import main

sys.exit(main())
