"""spark-submit jobs/examples.py --config ... : the `twotower examples` command as a job file."""
import sys

from twotower.cli import main

if __name__ == "__main__":
    main(["examples", *sys.argv[1:]], prog_name="jobs/examples.py")
