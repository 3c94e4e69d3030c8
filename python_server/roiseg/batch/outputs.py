"""File names of `roiseg batch`'s journal and summary, importable without torch."""

#: `roiseg batch`'s journal and summary: in OUT in folder mode, beside a QuPath project.
BATCH_FOLDER_JOURNAL, BATCH_FOLDER_SUMMARY = "roiseg-journal.jsonl", "summary.csv"
BATCH_PROJECT_JOURNAL, BATCH_PROJECT_SUMMARY = "roiseg-batch.jsonl", "roiseg-batch-summary.csv"
