"""python jobs/train.py --features DIR --model DIR [--config ...] : the `twotower train` command as a job file (no Spark)."""
import sys

from twotower.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]], prog_name="jobs/train.py")
