Traceback (most recent call last):
  File "/work/main/binfmtd/state.py", line 92, in write_atomic
    f.flush()
OSError: [Errno 28] No space left on device

During handling of the above exception, another exception occurred:

OSError: [Errno 28] No space left on device

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "<frozen runpy>", line 88, in _run_code
  File "/work/main/binfmtd/__main__.py", line 23, in <module>
    main()
  File "/work/main/binfmtd/__main__.py", line 11, in main
    sys.exit(run_apply(options))
             ^^^^^^^^^^^^^^^^^^
  File "/work/main/binfmtd/boot.py", line 47, in run_apply
    return finish_change(lambda: commands.apply(names, **options), as_json, options["check"])
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/binfmtd/output.py", line 95, in finish_change
    return finish(produce_and_warn, as_json, render_change, lambda r: EXIT_OK if r.ok else EXIT_FAILED, check)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/binfmtd/output.py", line 64, in finish
    result = produce()
             ^^^^^^^^^
  File "/work/main/binfmtd/output.py", line 88, in produce_and_warn
    report = produce()
             ^^^^^^^^^
  File "/work/main/binfmtd/boot.py", line 47, in <lambda>
    return finish_change(lambda: commands.apply(names, **options), as_json, options["check"])
                                 ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/binfmtd/commands.py", line 181, in apply
    outcome = execute(plan, path, host.kernel, state_dir, state)
              ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/binfmtd/act.py", line 119, in execute
    save_state(state_dir, state)
  File "/work/main/binfmtd/state.py", line 324, in save_state
    write_atomic(os.path.join(state_dir, STATE_FILE), format_state(state), 0o600)
  File "/work/main/binfmtd/state.py", line 90, in write_atomic
    with os.fdopen(fd, "w", encoding="utf-8") as f:
OSError: [Errno 28] No space left on device
