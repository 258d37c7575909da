"""Side-by-side benchmarks of zephyr and TRL on this machine (``make bench``); see bench/README.md."""
