"""Helpers of the application around the model zoo: safe output files and the run-folder layout (:mod:`.files`),
progress of long work (:mod:`.progress`), a device name checked against this machine (:mod:`.devices`), the memory
a training step keeps between forward and backward (:mod:`.memory`)."""
