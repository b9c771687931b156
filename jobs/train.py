"""spark-submit jobs/train.py --config ... : the `twotower train` command as a job file."""
import sys

from twotower_features.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]], prog_name="jobs/train.py")
