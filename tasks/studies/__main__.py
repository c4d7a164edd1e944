"""`python -m tasks.studies list | overlay ...`: see `tasks.studies.main`."""

import sys

from tasks.studies import main

sys.exit(main())
