"""`python -m tfcnn` is the same as the `tfcnn` command."""

import sys

from tfcnn.cli import main

sys.exit(main())
