"""What the flows run: the loop and its Prefect tasks, the studies (`studies/`), infrastructure (`infra/`) and outputs (`outputs/`)."""
