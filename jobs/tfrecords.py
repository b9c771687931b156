"""spark-submit jobs/tfrecords.py --config ... : the `twotower tfrecords` command as a job file."""
import sys

from twotower.cli import main

if __name__ == "__main__":
    main(["tfrecords", *sys.argv[1:]], prog_name="jobs/tfrecords.py")
