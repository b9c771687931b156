"""python jobs/metrics.py --predictions FILE --out FILE.json : the `twotower metrics` command as a job file (no Spark)."""
import sys

from twotower.cli import main

if __name__ == "__main__":
    main(["metrics", *sys.argv[1:]], prog_name="jobs/metrics.py")
