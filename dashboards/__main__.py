"""``python -m dashboards`` (``make dashboards``): regenerate grafana/dashboards/*.json."""

import sys

from dashboards.render import main

sys.exit(main())
