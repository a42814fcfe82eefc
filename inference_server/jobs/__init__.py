"""Prediction jobs: work too large to wait for, submitted, run by a consumer, polled, fetched.

- `records`: the job records (who owns each job, its state and counts) in the server's storage;
- `payloads`: a job's inputs and its result, files under `data/jobs/`;
- `queue`: the task queue (Huey) and the consumer that runs the jobs;
- `service`: what the routes and the command line do with jobs;
- `routes`: `/jobs` (`init_app`).
"""
