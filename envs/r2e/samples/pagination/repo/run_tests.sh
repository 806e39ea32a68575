#!/usr/bin/env bash
# Prints pytest's -rA summary, which the reward parses.
cd "$(dirname "$0")"
PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python -m pytest -rA -p no:cacheprovider -q tests
