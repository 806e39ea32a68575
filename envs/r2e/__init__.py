"""R2E REPL env: real Python repositories with real bugs, fixed through a sandboxed REPL, scored by their tests."""
