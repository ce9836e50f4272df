"""Files: checkpoints written atomically and read without running code.

The atomic, durable write (``atomic_write``), the generic checkpoint file
(``checkpoint``), the Mentee file's layout (``mentee_file``), its values
(``mentee_values``) and their field checks (``mentee_fields``), the random
number generators a run draws from (``random_states``), and distributed
checkpoints through torch's DCP (``distributed_checkpoint``). Imports the
layers below.
"""
