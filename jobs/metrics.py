"""spark-submit jobs/metrics.py --config ... : the `twotower metrics` command as a job file."""
import sys

from twotower_features.cli import main

if __name__ == "__main__":
    main(["metrics", *sys.argv[1:]], prog_name="jobs/metrics.py")
