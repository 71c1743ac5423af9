"""What a job learns with: datasets and partitions, the model zoo, training loops, the job's build."""
