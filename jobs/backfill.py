"""spark-submit jobs/backfill.py --config ... --start D1 --end D2 : the `twotower backfill` command as a job file."""
import sys

from twotower.cli import main

if __name__ == "__main__":
    main(["backfill", *sys.argv[1:]], prog_name="jobs/backfill.py")
