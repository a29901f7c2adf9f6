"""`python run.py pipeline.yaml`: plan and run a pipeline. See `python run.py --help`."""

from pipeline.cli import main

if __name__ == "__main__":
    main()
