"""CLI commands beyond the core ones in `effprof/cli.py`: one module per command (or family).

Each module imports `app` (and `console`, `err_console`, the common option types) from `effprof.cli` and
decorates its functions with `@app.command(...)`; `effprof/cli.py` imports every module named in
`COMMAND_MODULES` at the end, so a new command is one new file here and one name in that tuple.
Keep module-level imports light (no torch): `effprof --help` imports every command module.
"""
