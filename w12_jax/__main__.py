"""`python -m w12_jax ...` is the `w12` command."""

from w12_jax.cli import main

raise SystemExit(main())
