"""python jobs/evaluate.py --features DIR --model DIR --out DIR : the `twotower evaluate` command as a job file (no Spark)."""
import sys

from twotower.cli import main

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]], prog_name="jobs/evaluate.py")
