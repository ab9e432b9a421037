"""distilabel's ``distilabel.mixins`` path; synthpipe needs no mixins (see ``runtime_parameters``)."""
