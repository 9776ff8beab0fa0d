"""Knowledge incorporation (SQuAD): data, self-edit prompts, training sequences, grading, ReST-EM."""
