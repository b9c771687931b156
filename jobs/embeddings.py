"""spark-submit jobs/embeddings.py --config ... : the `twotower embeddings` command as a job file."""
import sys

from twotower.cli import main

if __name__ == "__main__":
    main(["embeddings", *sys.argv[1:]], prog_name="jobs/embeddings.py")
