"""spark-submit jobs/evaluate.py --config ... : the `twotower evaluate` command as a job file."""
import sys

from twotower_features.cli import main

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]], prog_name="jobs/evaluate.py")
