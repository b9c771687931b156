"""spark-submit jobs/export.py --features F --model M --out E : the `twotower export` command as a job file."""
import sys

from twotower.cli import main

if __name__ == "__main__":
    main(["export", *sys.argv[1:]], prog_name="jobs/export.py")
