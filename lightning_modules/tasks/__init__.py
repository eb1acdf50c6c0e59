"""The application's top layer: the only code that knows `task=` names, argparse and console scripts
(dispatch, train / test / predict, dub, animate, the demo driver, the report command line)."""
