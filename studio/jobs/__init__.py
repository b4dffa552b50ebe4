"""The job manager: training runs queued, launched (here, by hand on other nodes, under Slurm
or over ssh), supervised, followed and settled. Uses the store and the training program;
the UI and the CLI use it."""
