import sys

from radixrt.cli import main

sys.exit(main())
