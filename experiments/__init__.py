"""The project's experiments: the paper comparison (`experiments.compare`), configs, results and
small tools for reading long runs (`experiments.tools`)."""
