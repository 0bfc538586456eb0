"""Reading a finished sweep from MLflow: the Pareto front and its tables (`pareto`), several sweeps compared, the
HTML report, samples of traces, the test-split and attack evaluation of chosen trials (`final`), and the export
of a trial as a plain Hugging Face model."""
