"""spark-submit jobs/generate.py --out DIR [--users N --items N ...] : the `twotower generate` command as a job file."""
import sys

from twotower.cli import main

if __name__ == "__main__":
    main(["generate", *sys.argv[1:]], prog_name="jobs/generate.py")
