"""``python -m tgr_hub.cli`` (and ``accelerate launch -m tgr_hub.cli``) runs the CLI."""

from .main import main

if __name__ == "__main__":
    raise SystemExit(main())
