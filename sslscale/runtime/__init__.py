"""The services a run talks to: `cluster` (plain Ray: init or join, placement checks, job submission) and
`tracking` (MLflow: store URI, nested resumable runs, held metrics, artifacts)."""
