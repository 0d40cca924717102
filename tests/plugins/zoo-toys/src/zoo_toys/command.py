"""A toy command: ``zoo toys-hello [--name X] [--times N]`` prints a greeting; ``--name`` empty is a
user error (a ZooError: one paragraph, exit 2). Written against docs/plugins.md (register_commands)."""
from zoo.errors import ZooError
from zoo.hookspecs import hookimpl


def add_arguments(parser):
    parser.add_argument("--name", default="zoo", help="who to greet")
    parser.add_argument("--times", type=int, default=1, help="how many times")


def run(args):
    if not args.name.strip():
        raise ZooError("--name is empty; give a name to greet, e.g. --name world.")
    for _ in range(args.times):
        print(f"hello, {args.name}, from zoo-toys")
    return 0


@hookimpl
def register_commands(register):
    register("toys-hello", "print a greeting (a toy command of zoo-toys)", add_arguments, run)
