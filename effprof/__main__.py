from effprof.cli import entry

entry()
