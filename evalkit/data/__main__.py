"""`python -m evalkit.data prepare|info`: see evalkit/data/prepare.py."""
import sys

from evalkit.data.prepare import main

sys.exit(main())
