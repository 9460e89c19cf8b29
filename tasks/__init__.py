"""Pure pipeline steps shared by ingestion, evaluation and serving; none imports Prefect."""
