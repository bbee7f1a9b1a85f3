"""`python -m backup_pipelines.cli`: the same as the `backup-pipelines` command."""

import sys

from backup_pipelines.cli import main

sys.exit(main())
