"""`python -m scanner.probe [ROOT]`: print one host's evidence as JSON."""

import json
import sys

from .host import probe_host

if __name__ == "__main__":
    print(
        json.dumps(probe_host(sys.argv[1] if len(sys.argv) > 1 else "/"), indent=1, sort_keys=True)
    )
