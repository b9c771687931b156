"""spark-submit jobs/nightly.py --config ... --date D [--stage S] : the `twotower nightly` command as a job file."""
import sys

from twotower.cli import main

if __name__ == "__main__":
    main(["nightly", *sys.argv[1:]], prog_name="jobs/nightly.py")
