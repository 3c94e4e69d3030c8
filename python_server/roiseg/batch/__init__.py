"""`roiseg batch`: folders and QuPath projects, with a journal for resume and exactly-once
output."""
