"""`python -m nriqa ...`: the command line (`nriqa.cli`)."""
from nriqa.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
