import sys

from sweep.run import main

sys.exit(main())
