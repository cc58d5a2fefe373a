"""How it runs: submit/resume, the Ray Tune runner, driver claims, Tune hooks, the recorder."""
