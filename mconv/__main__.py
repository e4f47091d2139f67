from mconv.cli import entry

entry()
