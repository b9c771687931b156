"""spark-submit jobs/features.py --config ... : the `twotower features` command as a job file."""
import sys

from twotower.cli import main

if __name__ == "__main__":
    main(["features", *sys.argv[1:]], prog_name="jobs/features.py")
