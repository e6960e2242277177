import sys

from terrafm_jax.export.cli import main

sys.exit(main())
