"""Reports: text for the terminal, the run's HTML report and charts, contact sheets."""
