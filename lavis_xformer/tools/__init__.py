"""Analysis commands: query diversity, reconstruction pictures, comparison of evaluation runs."""
