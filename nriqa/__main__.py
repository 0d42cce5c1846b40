"""`python -m nriqa runs` (compare MLflow runs), `python -m nriqa score PATH...` (score images) and
`python -m nriqa evaluate PATH --format ...` (measure the model on a labelled dataset folder)."""

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nriqa", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    from nriqa.evaluation import external
    from nriqa.ops.runs import add_runs_command
    from nriqa.serving import scoring

    add_runs_command(commands)
    scoring.add_score_command(commands)
    external.add_evaluate_command(commands)
    args = parser.parse_args(argv)
    return args.handler(args) or 0


if __name__ == "__main__":
    sys.exit(main())
