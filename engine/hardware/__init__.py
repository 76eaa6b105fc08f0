"""Hardware: what the machine is (CPU, GPU), the precision it runs, its peak and readings, and what a config needs of it."""
