"""spark-submit jobs/prepare.py --config ... : the `twotower prepare` command as a job file."""
import sys

from twotower.cli import main

if __name__ == "__main__":
    main(["prepare", *sys.argv[1:]], prog_name="jobs/prepare.py")
