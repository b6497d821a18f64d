"""What is shown: rich tables, CSV/JSON files, plots. Receives plain records, knows nothing of torch."""
